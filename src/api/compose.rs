//! What a `Send` asks for besides plain text and media: a reply (quote and
//! mentions), a reaction, an edit or a revoke, checked and turned into the
//! protocol's [`Compose`].

use tonic::Status;

use crate::proto::gateway::send_request::Action;
use crate::proto::gateway::{MessageRef as ApiRef, SendRequest};
use crate::wa::compose::{Compose, MessageRef};
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

/// Whether the request asks for more than a plain text.
pub(crate) fn has_extras(req: &SendRequest) -> bool {
    req.action.is_some()
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
    }
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
