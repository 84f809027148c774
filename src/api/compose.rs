//! What a `Send` asks for besides plain text and media: a reply (quote and
//! mentions), a reaction, an edit, a revoke, a vote, a location, contact
//! cards or a poll, checked and turned into the protocol's [`Compose`].

use tonic::Status;

use crate::proto::gateway::send_request::{Action, Content};
use crate::proto::gateway::{
    Contacts as ApiContacts, Location as ApiLocation, MessageRef as ApiRef, Poll as ApiPoll,
    SendRequest,
};
use crate::wa::compose::{Compose, MessageRef};
use crate::wa::content::{ContactCard, Contacts, Location, Poll, MAX_POLL_OPTIONS};
use crate::wa::jid::Jid;

use super::errors::invalid;
use super::gateway::recipient;

/// Longest text a Send carries (bytes).
pub(crate) const MAX_TEXT: usize = 65_536;
/// Longest message id accepted in a reference.
const MAX_ID: usize = 128;
/// Longest reaction (one emoji, perhaps with modifiers), bytes.
const MAX_EMOJI: usize = 64;
/// Most users one text mentions.
const MAX_MENTIONS: usize = 1_024;
/// Longest name, address, url or caption of a location (bytes).
const MAX_PLACE_TEXT: usize = 1_024;
/// Longest vCard and most cards sent at once.
const MAX_VCARD: usize = crate::wa::content::MAX_VCARD_BYTES;
const MAX_CARDS: usize = crate::wa::content::MAX_CARDS;
/// Longest poll question or option (bytes), as WhatsApp's apps allow.
const MAX_POLL_TEXT: usize = 255;

/// Whether the request asks for more than a plain text.
pub(crate) fn has_extras(req: &SendRequest) -> bool {
    req.action.is_some()
        || req.content.is_some()
        || req.reply_to.is_some()
        || !req.mentions.is_empty()
        || !req.quoted_text.is_empty()
}

/// The content of a text-like Send to `to` (no media).
pub(crate) fn compose(req: &mut SendRequest, to: &Jid) -> Result<Compose, Status> {
    let text = std::mem::take(&mut req.text);
    if text.len() > MAX_TEXT {
        return Err(invalid("text", format!("longer than {MAX_TEXT} bytes")));
    }
    if let Some(content) = req.content.take() {
        if !text.is_empty() {
            return Err(invalid(
                "text",
                "a location, contact cards or a poll carries no text",
            ));
        }
        if req.action.is_some()
            || req.reply_to.is_some()
            || !req.quoted_text.is_empty()
            || !req.mentions.is_empty()
        {
            return Err(invalid(
                "content",
                "a location, contact cards or a poll is sent alone: no reply_to, mentions or action",
            ));
        }
        return match content {
            Content::Location(l) => location(l).map(Compose::Location),
            Content::Contacts(c) => contacts(c).map(Compose::Contacts),
            Content::Poll(p) => poll(p).map(Compose::Poll),
        };
    }
    let Some(action) = req.action.take() else {
        if text.is_empty() {
            return Err(invalid("text", "message text is empty"));
        }
        let quote = match req.reply_to.take() {
            Some(target) => Some((
                reference("reply_to", target)?,
                Some(std::mem::take(&mut req.quoted_text)).filter(|t| !t.is_empty()),
            )),
            None if !req.quoted_text.is_empty() => {
                return Err(invalid("quoted_text", "only goes with reply_to"));
            }
            None => None,
        };
        if req.mentions.len() > MAX_MENTIONS {
            return Err(invalid("mentions", format!("more than {MAX_MENTIONS}")));
        }
        let mentions = req
            .mentions
            .iter()
            .map(|m| recipient(m).map_err(|e| invalid("mentions", e.message())))
            .collect::<Result<Vec<_>, _>>()?;
        if mentions.iter().any(Jid::is_group) {
            return Err(invalid("mentions", "a mention names a user, not a group"));
        }
        return Ok(Compose::Text {
            text,
            quote,
            mentions,
        });
    };
    if req.reply_to.is_some() || !req.quoted_text.is_empty() || !req.mentions.is_empty() {
        return Err(invalid(
            "reply_to",
            "a reaction, edit or revoke quotes and mentions nothing",
        ));
    }
    match action {
        Action::Reaction(reaction) => {
            if !text.is_empty() {
                return Err(invalid(
                    "text",
                    "a reaction carries no text: set reaction.emoji",
                ));
            }
            if reaction.emoji.len() > MAX_EMOJI {
                return Err(invalid(
                    "reaction.emoji",
                    format!("longer than {MAX_EMOJI} bytes: one emoji"),
                ));
            }
            let target = reaction
                .target
                .ok_or_else(|| invalid("reaction.target", "missing"))?;
            Ok(Compose::Reaction {
                target: reference("reaction.target", target)?,
                emoji: reaction.emoji,
            })
        }
        Action::Edit(target) => {
            if text.is_empty() {
                return Err(invalid("text", "an edit needs the new text"));
            }
            let target = reference("edit", target)?;
            if !target.from_me {
                return Err(invalid(
                    "edit.from_me",
                    "only this account's own messages can be edited",
                ));
            }
            Ok(Compose::Edit { target, text })
        }
        Action::Revoke(target) => {
            if !text.is_empty() {
                return Err(invalid("text", "a revoke carries no text"));
            }
            let target = reference("revoke", target)?;
            let admin_revoke = to.is_group() && target.sender.is_some();
            if !target.from_me && !admin_revoke {
                return Err(invalid(
                    "revoke",
                    "another's message can only be revoked in a group, as its admin, \
                     with revoke.sender set",
                ));
            }
            Ok(Compose::Revoke { target })
        }
        Action::PollVote(vote) => {
            if !text.is_empty() {
                return Err(invalid("text", "a vote carries no text"));
            }
            let target = vote
                .poll
                .ok_or_else(|| invalid("poll_vote.poll", "missing"))?;
            let options = distinct("poll_vote.options", vote.options)?;
            if options.len() > MAX_POLL_OPTIONS {
                return Err(invalid(
                    "poll_vote.options",
                    format!("more than {MAX_POLL_OPTIONS}: a poll has no more"),
                ));
            }
            Ok(Compose::PollVote {
                poll: reference("poll_vote.poll", target)?,
                options,
            })
        }
    }
}

/// A checked location to send.
fn location(l: ApiLocation) -> Result<Location, Status> {
    if !l.latitude.is_finite() || !(-90.0..=90.0).contains(&l.latitude) {
        return Err(invalid(
            "location.latitude",
            format!("{} is not a latitude in degrees (-90 to 90)", l.latitude),
        ));
    }
    if !l.longitude.is_finite() || !(-180.0..=180.0).contains(&l.longitude) {
        return Err(invalid(
            "location.longitude",
            format!(
                "{} is not a longitude in degrees (-180 to 180)",
                l.longitude
            ),
        ));
    }
    if l.live {
        return Err(invalid(
            "location.live",
            "sending a live location is not supported",
        ));
    }
    if l.accuracy_meters != 0 {
        return Err(invalid("location.accuracy_meters", "only set in events"));
    }
    let text = |field: &str, value: String| -> Result<Option<String>, Status> {
        if value.len() > MAX_PLACE_TEXT {
            return Err(invalid(
                &format!("location.{field}"),
                format!("longer than {MAX_PLACE_TEXT} bytes"),
            ));
        }
        Ok(Some(value).filter(|v| !v.is_empty()))
    };
    Ok(Location {
        latitude: l.latitude,
        longitude: l.longitude,
        name: text("name", l.name)?,
        address: text("address", l.address)?,
        url: text("url", l.url)?,
        caption: text("caption", l.caption)?,
        live: false,
        accuracy_meters: None,
    })
}

/// Checked contact cards to send: each a vCard (`BEGIN:VCARD` …
/// `END:VCARD`) with a name to show.
fn contacts(c: ApiContacts) -> Result<Contacts, Status> {
    if c.cards.is_empty() {
        return Err(invalid("contacts.cards", "no card"));
    }
    if c.cards.len() > MAX_CARDS {
        return Err(invalid("contacts.cards", format!("more than {MAX_CARDS}")));
    }
    if c.display_name.len() > MAX_PLACE_TEXT {
        return Err(invalid(
            "contacts.display_name",
            format!("longer than {MAX_PLACE_TEXT} bytes"),
        ));
    }
    let cards = c
        .cards
        .into_iter()
        .enumerate()
        .map(|(i, card)| {
            let field = |name: &str| format!("contacts.cards[{i}].{name}");
            let name = card.display_name.trim();
            if name.is_empty() {
                return Err(invalid(&field("display_name"), "missing"));
            }
            if name.len() > MAX_PLACE_TEXT {
                return Err(invalid(
                    &field("display_name"),
                    format!("longer than {MAX_PLACE_TEXT} bytes"),
                ));
            }
            if card.vcard.len() > MAX_VCARD {
                return Err(invalid(
                    &field("vcard"),
                    format!(
                        "{} bytes: a vCard is at most {MAX_VCARD} bytes",
                        card.vcard.len()
                    ),
                ));
            }
            let vcard = card.vcard.trim();
            let starts = vcard
                .get(..11)
                .is_some_and(|s| s.eq_ignore_ascii_case("BEGIN:VCARD"));
            let ends = vcard
                .len()
                .checked_sub(9)
                .and_then(|at| vcard.get(at..))
                .is_some_and(|s| s.eq_ignore_ascii_case("END:VCARD"));
            if !starts || !ends {
                return Err(invalid(
                    &field("vcard"),
                    "not a vCard: it must start with BEGIN:VCARD and end with END:VCARD",
                ));
            }
            Ok(ContactCard {
                display_name: name.to_owned(),
                vcard: vcard.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Contacts {
        display_name: Some(c.display_name).filter(|n| !n.is_empty()),
        cards,
    })
}

/// A checked poll to send.
fn poll(p: ApiPoll) -> Result<Poll, Status> {
    let name = p.name.trim();
    if name.is_empty() {
        return Err(invalid("poll.name", "the question is empty"));
    }
    if name.len() > MAX_POLL_TEXT {
        return Err(invalid(
            "poll.name",
            format!("longer than {MAX_POLL_TEXT} bytes"),
        ));
    }
    let options = distinct("poll.options", p.options)?;
    if options.len() < 2 {
        return Err(invalid("poll.options", "a poll needs at least 2 options"));
    }
    if options.len() > MAX_POLL_OPTIONS {
        return Err(invalid(
            "poll.options",
            format!(
                "{} options: a poll has at most {MAX_POLL_OPTIONS}",
                options.len()
            ),
        ));
    }
    if let Some(long) = options.iter().find(|o| o.len() > MAX_POLL_TEXT) {
        return Err(invalid(
            "poll.options",
            format!("{long:?} is longer than {MAX_POLL_TEXT} bytes"),
        ));
    }
    let count = options.len();
    if usize::try_from(p.selectable_count).map_or(true, |n| n > count) {
        return Err(invalid(
            "poll.selectable_count",
            format!(
                "{} is out of range: 0 (any number) or 1 to {count} (the number of options)",
                p.selectable_count
            ),
        ));
    }
    Ok(Poll {
        name: name.to_owned(),
        options,
        selectable: p.selectable_count,
    })
}

/// Options as given (a vote names them exactly as the poll does): none
/// blank, none twice.
fn distinct(field: &str, options: Vec<String>) -> Result<Vec<String>, Status> {
    let mut out: Vec<String> = Vec::with_capacity(options.len());
    for option in options {
        if option.trim().is_empty() {
            return Err(invalid(field, "an option is empty"));
        }
        if out.contains(&option) {
            return Err(invalid(field, format!("{option:?} is given twice")));
        }
        out.push(option);
    }
    Ok(out)
}

/// A checked message reference; `field` names it in errors.
fn reference(field: &str, target: ApiRef) -> Result<MessageRef, Status> {
    let id = target.id.trim();
    if id.is_empty() {
        return Err(invalid(&format!("{field}.id"), "missing"));
    }
    if id.len() > MAX_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            &format!("{field}.id"),
            format!("not a message id (printable ASCII, at most {MAX_ID} characters)"),
        ));
    }
    let sender = match target.sender.trim() {
        "" => None,
        raw => Some(recipient(raw).map_err(|e| invalid(&format!("{field}.sender"), e.message()))?),
    };
    if sender.as_ref().is_some_and(Jid::is_group) {
        return Err(invalid(
            &format!("{field}.sender"),
            "names a user, not a group",
        ));
    }
    Ok(MessageRef {
        id: id.to_owned(),
        from_me: target.from_me,
        sender,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gateway::Reaction;

    fn request(text: &str) -> SendRequest {
        SendRequest {
            session_id: "s".into(),
            to: "+15551234567".into(),
            text: text.into(),
            ..Default::default()
        }
    }

    fn peer() -> Jid {
        "15551234567@s.whatsapp.net".parse().expect("jid")
    }

    fn theirs(id: &str) -> ApiRef {
        ApiRef {
            id: id.into(),
            from_me: false,
            sender: String::new(),
        }
    }

    #[test]
    fn replies_and_mentions_are_read() {
        let mut req = request("yes @15550003333");
        req.reply_to = Some(theirs("3EB0AA"));
        req.quoted_text = "coming?".into();
        req.mentions = vec!["+1 555 000 3333".into()];
        let Compose::Text {
            text,
            quote,
            mentions,
        } = compose(&mut req, &peer()).expect("valid")
        else {
            panic!("a text");
        };
        assert_eq!(text, "yes @15550003333");
        let (target, quoted) = quote.expect("quote");
        assert_eq!(
            (target.id.as_str(), quoted.as_deref()),
            ("3EB0AA", Some("coming?"))
        );
        assert_eq!(mentions[0].to_string(), "15550003333@s.whatsapp.net");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases: Vec<(SendRequest, &str)> = vec![
            (request(""), "text"),
            (
                SendRequest {
                    quoted_text: "q".into(),
                    ..request("hi")
                },
                "quoted_text",
            ),
            (
                SendRequest {
                    mentions: vec!["nope".into()],
                    ..request("hi")
                },
                "mentions",
            ),
            (
                SendRequest {
                    action: Some(Action::Reaction(Reaction {
                        target: Some(theirs("X")),
                        emoji: "👍".into(),
                    })),
                    ..request("text too")
                },
                "text",
            ),
            (
                SendRequest {
                    action: Some(Action::Reaction(Reaction {
                        target: Some(theirs("")),
                        emoji: "👍".into(),
                    })),
                    ..request("")
                },
                "reaction.target.id",
            ),
            (
                SendRequest {
                    action: Some(Action::Edit(theirs("X"))),
                    ..request("new")
                },
                "edit.from_me",
            ),
            (
                SendRequest {
                    action: Some(Action::Revoke(theirs("X"))),
                    ..request("")
                },
                "revoke",
            ),
            (
                SendRequest {
                    action: Some(Action::Revoke(ApiRef {
                        id: "bad id".into(),
                        from_me: true,
                        sender: String::new(),
                    })),
                    ..request("")
                },
                "revoke.id",
            ),
        ];
        for (mut req, field) in cases {
            let e = compose(&mut req, &peer()).expect_err(field);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(
                e.message().starts_with(&format!("{field}:")),
                "{field}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn an_admin_may_revoke_a_members_message_in_a_group() {
        let group: Jid = "120363000000000001@g.us".parse().expect("jid");
        let mut req = request("");
        req.action = Some(Action::Revoke(ApiRef {
            id: "X".into(),
            from_me: false,
            sender: "+15550004444".into(),
        }));
        let Compose::Revoke { target } = compose(&mut req, &group).expect("valid") else {
            panic!("a revoke");
        };
        assert_eq!(
            target.sender.map(|s| s.to_string()).as_deref(),
            Some("15550004444@s.whatsapp.net")
        );
    }
}
