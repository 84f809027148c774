//! Virtual phones and locations, contact cards and polls: a phone sends
//! them (1:1 chats), keeps the secret of every poll it sends or receives
//! (groups too), votes on a poll (sealed with that secret, as WhatsApp's
//! apps do), and its inbox shows what it received, decoded — a vote opened
//! and named by the poll's options. Imports `wa` only.

use std::collections::HashMap;

use prost::Message as _;

use super::phone::{device_sent_copy, Phone};
use super::snapshot::{SavedInboxContent, SavedPoll};
use super::{Inner, SimError};
use crate::proto::wa::{Message, MessageKey};
use crate::wa::content::{self, Contacts, Location, MessageSecret, Poll, Rich};
use crate::wa::jid::{Jid, DEFAULT_USER_SERVER};

/// Most polls one phone keeps secrets of (the oldest go first).
const MAX_POLLS: usize = 4_096;

/// What a phone sends besides texts and media.
#[derive(Clone, Debug, PartialEq)]
pub enum PhoneContent {
    Location(Location),
    Contacts(Contacts),
    Poll(Poll),
    /// A vote on the poll with this id (one the phone sent or received):
    /// the options chosen, by name.
    Vote {
        poll_id: String,
        options: Vec<String>,
    },
}

/// What a phone's inbox shows of a location, cards, a poll or a vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxContent {
    Location(Location),
    Contacts(Contacts),
    Poll(Poll),
    /// A vote on the poll `poll_id`: the options chosen, or why the vote
    /// could not be opened.
    Vote {
        poll_id: String,
        options: Result<Vec<String>, String>,
    },
}

/// A poll a phone knows: enough to open votes on it and to vote.
#[derive(Clone, Debug)]
pub(crate) struct PhonePoll {
    secret: MessageSecret,
    /// Who made it (no device).
    creator: Jid,
    options: Vec<String>,
    /// Order of arrival, to forget the oldest first.
    order: u64,
}

/// The polls a phone knows, by message id.
#[derive(Clone, Debug, Default)]
pub(crate) struct PhonePolls {
    polls: HashMap<String, PhonePoll>,
    next: u64,
}

impl PhonePolls {
    fn remember(&mut self, id: String, secret: MessageSecret, creator: Jid, options: Vec<String>) {
        if self.polls.len() >= MAX_POLLS && !self.polls.contains_key(&id) {
            let oldest = self
                .polls
                .iter()
                .min_by_key(|(_, p)| p.order)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.polls.remove(&oldest);
            }
        }
        self.next += 1;
        self.polls.insert(
            id,
            PhonePoll {
                secret,
                creator: creator.to_non_ad(),
                options,
                order: self.next,
            },
        );
    }

    /// The state file's form.
    pub(crate) fn saved(&self) -> Vec<SavedPoll> {
        let mut polls: Vec<(&String, &PhonePoll)> = self.polls.iter().collect();
        polls.sort_by_key(|(_, p)| p.order);
        polls
            .into_iter()
            .map(|(id, p)| SavedPoll {
                id: id.clone(),
                secret: p.secret.as_bytes().to_vec(),
                creator: p.creator.to_string(),
                options: p.options.clone(),
            })
            .collect()
    }

    /// From the state file; unusable entries are left out.
    pub(crate) fn restore(saved: &[SavedPoll]) -> Self {
        let mut polls = Self::default();
        for p in saved {
            if let (Some(secret), Ok(creator)) =
                (MessageSecret::from_slice(&p.secret), p.creator.parse())
            {
                polls.remember(p.id.clone(), secret, creator, p.options.clone());
            }
        }
        polls
    }
}

impl Phone {
    /// What the inbox shows of `rich`, message `id` from `from`, keeping a
    /// poll's secret.
    pub(crate) fn receive_rich(&mut self, rich: Rich, id: &str, from: &Jid) -> InboxContent {
        match rich {
            Rich::Location(l) => InboxContent::Location(l),
            Rich::Contacts(c) => InboxContent::Contacts(c),
            Rich::Poll { poll, secret } => {
                if let Some(secret) = secret {
                    self.polls
                        .remember(id.to_owned(), secret, from.clone(), poll.options.clone());
                }
                InboxContent::Poll(poll)
            }
            Rich::Vote { poll, vote } => {
                let options = match (self.polls.polls.get(&poll.id), vote) {
                    (None, _) => Err(format!("poll {} is unknown to this phone", poll.id)),
                    (Some(_), None) => Err("the vote carries nothing sealed".to_owned()),
                    (Some(known), Some(vote)) => {
                        content::open_vote(&known.secret, &poll.id, &known.creator, from, &vote)
                            .map(|hashes| content::chosen(&known.options, &hashes))
                            .map_err(|e| e.to_string())
                    }
                };
                InboxContent::Vote {
                    poll_id: poll.id,
                    options,
                }
            }
        }
    }
}

impl Inner {
    /// The phone of `from_user` sends a location, cards, a poll or a vote
    /// to the account `to_user` (its devices, and a sent copy to the
    /// phone's companions). Returns the message id.
    pub(crate) async fn phone_send_content(
        &self,
        from_user: &str,
        to_user: &str,
        content: PhoneContent,
    ) -> Result<String, SimError> {
        let plan = self.phone_plan(from_user, to_user)?;
        let me = Jid::new(from_user, DEFAULT_USER_SERVER);
        let mut rng = self.fork_rng();
        let (message, poll) = match content {
            PhoneContent::Location(l) => (content::location_message(&l), None),
            PhoneContent::Contacts(c) => (content::contacts_message(&c), None),
            PhoneContent::Poll(p) => {
                let secret = MessageSecret::generate(&mut rng);
                let message = content::poll_message(&p, Some(&secret));
                (message, Some((secret, p.options)))
            }
            PhoneContent::Vote { poll_id, options } => {
                let known = self
                    .registry
                    .with_handset(from_user, |h| h.polls.polls.get(&poll_id).cloned())
                    .flatten()
                    .ok_or_else(|| {
                        SimError::NotFound(format!("phone {from_user} knows no poll {poll_id}"))
                    })?;
                if let Some(unknown) = options.iter().find(|o| !known.options.contains(o)) {
                    return Err(SimError::InvalidContent(format!(
                        "{unknown:?} is not an option of poll {poll_id}"
                    )));
                }
                // The poll's key as the voter writes it: in its chat with
                // the peer, from the voter or not.
                let key = MessageKey {
                    remote_jid: Some(plan.chat.to_non_ad().to_string()),
                    from_me: Some(known.creator.user == from_user),
                    id: Some(poll_id),
                    participant: None,
                };
                let mut message = content::unsealed_vote(key, &options, 0);
                content::seal_vote_in(&mut message, &known.secret, &known.creator, &me, &mut rng);
                (message, None)
            }
        };
        let for_self = device_sent_copy(&plan.chat.to_string(), message.clone());
        let id = self
            .phone_send_message(&plan, &message, &for_self, None)
            .await?;
        if let Some((secret, options)) = poll {
            self.registry.with_handset(from_user, |h| {
                h.polls.remember(id.clone(), secret, me.clone(), options)
            });
        }
        Ok(id)
    }
}

/// The state file's form of an inbox entry's content.
pub(crate) fn saved_content(content: &InboxContent) -> SavedInboxContent {
    match content {
        InboxContent::Location(l) => SavedInboxContent {
            message: content::location_message(l).encode_to_vec(),
            ..Default::default()
        },
        InboxContent::Contacts(c) => SavedInboxContent {
            message: content::contacts_message(c).encode_to_vec(),
            ..Default::default()
        },
        InboxContent::Poll(p) => SavedInboxContent {
            message: content::poll_message(p, None).encode_to_vec(),
            ..Default::default()
        },
        InboxContent::Vote { poll_id, options } => SavedInboxContent {
            message: Vec::new(),
            vote_poll: poll_id.clone(),
            vote_options: options.clone().unwrap_or_default(),
            vote_error: options.clone().err(),
        },
    }
}

/// An inbox entry's content from the state file.
pub(crate) fn restored_content(saved: &SavedInboxContent) -> Option<InboxContent> {
    if !saved.vote_poll.is_empty() {
        return Some(InboxContent::Vote {
            poll_id: saved.vote_poll.clone(),
            options: saved
                .vote_error
                .clone()
                .map_or_else(|| Ok(saved.vote_options.clone()), Err),
        });
    }
    let message = Message::decode(saved.message.as_slice()).ok()?;
    Some(match Rich::read(&message)? {
        Rich::Location(l) => InboxContent::Location(l),
        Rich::Contacts(c) => InboxContent::Contacts(c),
        Rich::Poll { poll, .. } => InboxContent::Poll(poll),
        Rich::Vote { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn jid(s: &str) -> Jid {
        s.parse().expect("jid")
    }

    #[test]
    fn polls_and_inbox_content_survive_the_state_file() {
        let mut rng = StdRng::seed_from_u64(3);
        let secret = MessageSecret::generate(&mut rng);
        let creator = jid("15550001111:2@s.whatsapp.net");
        let mut polls = PhonePolls::default();
        polls.remember(
            "3EB0P1".into(),
            secret.clone(),
            creator.clone(),
            vec!["a".into(), "b".into()],
        );
        let saved = polls.saved();
        assert_eq!(saved[0].creator, "15550001111@s.whatsapp.net");
        let restored = PhonePolls::restore(&saved);
        let poll = restored.polls.get("3EB0P1").expect("kept");
        assert_eq!((&poll.secret, &poll.options), (&secret, &saved[0].options));
        // An unusable entry is left out, not fatal.
        let mut bad = saved;
        bad[0].secret = vec![1, 2];
        assert!(PhonePolls::restore(&bad).polls.is_empty());

        let contents = [
            InboxContent::Location(Location {
                latitude: 1.5,
                longitude: -2.5,
                name: Some("here".into()),
                ..Default::default()
            }),
            InboxContent::Contacts(Contacts {
                display_name: Some("two".into()),
                cards: vec![
                    content::ContactCard {
                        display_name: "A".into(),
                        vcard: "BEGIN:VCARD\nFN:A\nEND:VCARD".into(),
                    },
                    content::ContactCard {
                        display_name: "B".into(),
                        vcard: "BEGIN:VCARD\nFN:B\nEND:VCARD".into(),
                    },
                ],
            }),
            InboxContent::Poll(Poll {
                name: "q".into(),
                options: vec!["x".into(), "y".into()],
                selectable: 1,
            }),
            InboxContent::Vote {
                poll_id: "3EB0P1".into(),
                options: Ok(vec!["b".into()]),
            },
            InboxContent::Vote {
                poll_id: "3EB0P2".into(),
                options: Err("unknown".into()),
            },
        ];
        for content in contents {
            assert_eq!(
                restored_content(&saved_content(&content)),
                Some(content.clone()),
                "{content:?}"
            );
        }
    }

    #[test]
    fn a_phone_opens_votes_on_its_polls_only() {
        let mut rng = StdRng::seed_from_u64(4);
        let identity = crate::wa::crypto::KeyPair::generate(&mut rng);
        let mut phone = Phone::generate(identity, &mut rng);
        let secret = MessageSecret::generate(&mut rng);
        let creator = jid("15550009999@s.whatsapp.net");
        let voter = jid("15550001111:1@s.whatsapp.net");
        let poll = Poll {
            name: "q".into(),
            options: vec!["x".into(), "y".into()],
            selectable: 0,
        };
        let shown = phone.receive_rich(
            Rich::Poll {
                poll: poll.clone(),
                secret: Some(secret.clone()),
            },
            "3EB0P",
            &creator,
        );
        assert_eq!(shown, InboxContent::Poll(poll));
        let key = MessageKey {
            remote_jid: Some(creator.to_string()),
            from_me: Some(false),
            id: Some("3EB0P".into()),
            participant: None,
        };
        let mut vote = content::unsealed_vote(key, &["y".into()], 1);
        content::seal_vote_in(&mut vote, &secret, &creator, &voter, &mut rng);
        let rich = Rich::read(&vote).expect("a vote");
        assert_eq!(
            phone.receive_rich(rich.clone(), "3EB0V", &voter.to_non_ad()),
            InboxContent::Vote {
                poll_id: "3EB0P".into(),
                options: Ok(vec!["y".into()])
            }
        );
        let other = jid("15550002222@s.whatsapp.net");
        assert!(matches!(
            phone.receive_rich(rich, "3EB0W", &other),
            InboxContent::Vote {
                options: Err(_),
                ..
            }
        ));
    }
}
