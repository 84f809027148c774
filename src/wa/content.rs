//! Locations, contact cards and polls: built for sending and read on
//! arrival, and the sealing of poll votes. Facts from WhatsApp's `Message`
//! protobuf: a location is a `locationMessage` (degrees, name, address,
//! url) or, shared live, a `liveLocationMessage`; a contact card is a
//! `contactMessage` (display name and vCard), several are a
//! `contactsArrayMessage`; a poll is a `pollCreationMessage` (V3 for a
//! single choice) whose `messageContextInfo.messageSecret` (32 random
//! bytes) seals the votes on it. A vote is a `pollUpdateMessage` naming the
//! poll by its key, with a `PollVoteMessage` (the SHA-256 of each option
//! chosen) sealed in AES-256-GCM under HKDF-SHA256(secret, no salt,
//! poll id ‖ poll creator ‖ voter ‖ "Poll Vote"), with
//! `poll id ‖ 0x00 ‖ voter` as additional data (JIDs without device).
//! No I/O; randomness comes in as an argument.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use prost::Message as _;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::proto::wa::message::poll_creation_message::Option as PollOption;
use crate::proto::wa::message::{
    ContactMessage, ContactsArrayMessage, LocationMessage, PollCreationMessage, PollEncValue,
    PollUpdateMessage, PollVoteMessage,
};
use crate::proto::wa::{Message, MessageContextInfo, MessageKey};
use crate::wa::compose::SenderKey;
use crate::wa::crypto::{hkdf_sha256, sha256};
use crate::wa::jid::Jid;

/// Most options a poll has (WhatsApp's limit).
pub const MAX_POLL_OPTIONS: usize = 12;
/// Longest text field kept from an arriving location, card or poll (bytes).
const MAX_FIELD_BYTES: usize = 4_096;
/// Longest vCard kept from an arriving card (bytes); longer ones are cut
/// out, not cut short (half a vCard is no vCard).
pub const MAX_VCARD_BYTES: usize = 64 * 1024;
/// Most cards kept from one arriving message.
pub const MAX_CARDS: usize = 64;
/// The use case a vote's key is derived for.
const POLL_VOTE: &[u8] = b"Poll Vote";
/// Length of a poll's message secret and of an AES-GCM nonce.
pub const SECRET_LEN: usize = 32;
const IV_LEN: usize = 12;

/// A place on the map; latitude and longitude are finite degrees.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    pub name: Option<String>,
    pub address: Option<String>,
    pub url: Option<String>,
    /// Shared live (a `liveLocationMessage`, or a location marked live).
    pub live: bool,
    /// A live location's caption, or a location's comment.
    pub caption: Option<String>,
    pub accuracy_meters: Option<u32>,
}

// Degrees are finite by construction (arriving NaN or infinities make no
// location), so equality is an equivalence.
impl Eq for Location {}

/// One contact card.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContactCard {
    pub display_name: String,
    /// The vCard text (`BEGIN:VCARD` … `END:VCARD`).
    pub vcard: String,
}

/// One card or several (then with a name for the lot).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Contacts {
    pub display_name: Option<String>,
    pub cards: Vec<ContactCard>,
}

/// A poll: its question, options in order, and how many options one voter
/// may choose (0: any number).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Poll {
    pub name: String,
    pub options: Vec<String>,
    pub selectable: u32,
}

/// A poll's message secret. `Debug` keeps it out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageSecret(Zeroizing<[u8; SECRET_LEN]>);

impl std::fmt::Debug for MessageSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageSecret(..)")
    }
}

impl MessageSecret {
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill_bytes(secret.as_mut());
        Self(secret)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let secret: [u8; SECRET_LEN] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(secret)))
    }

    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

/// A vote as it travels: sealed under the poll's secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedVote {
    pub payload: Vec<u8>,
    pub iv: Vec<u8>,
}

/// Why a vote could not be opened or sealed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    #[error("the vote does not open with the poll's secret")]
    Seal,
    #[error("the opened vote is not a PollVoteMessage")]
    Malformed,
}

/// What an arriving message carries of the kinds this module reads, from
/// the sender's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rich {
    Location(Location),
    Contacts(Contacts),
    /// A poll, with its secret when the message carried one.
    Poll {
        poll: Poll,
        secret: Option<MessageSecret>,
    },
    /// A vote on the poll `poll` (its key as the voter wrote it); `None`
    /// when the vote carried nothing sealed.
    Vote {
        poll: SenderKey,
        vote: Option<SealedVote>,
    },
}

impl Rich {
    /// Reads `message` (already unwrapped from a device-sent copy); `None`
    /// when it is none of these kinds or unusable (a location without
    /// finite coordinates, a poll without options, a vote without a key).
    pub fn read(message: &Message) -> Option<Self> {
        if let Some(l) = &message.location_message {
            return location(l).map(Self::Location);
        }
        if let Some(l) = &message.live_location_message {
            let (latitude, longitude) = degrees(l.degrees_latitude, l.degrees_longitude)?;
            return Some(Self::Location(Location {
                latitude,
                longitude,
                live: true,
                caption: l.caption.clone().map(cut),
                accuracy_meters: l.accuracy_in_meters,
                ..Default::default()
            }));
        }
        if let Some(c) = &message.contact_message {
            return Some(Self::Contacts(Contacts {
                display_name: None,
                cards: card(c).into_iter().collect(),
            }));
        }
        if let Some(c) = &message.contacts_array_message {
            return Some(Self::Contacts(Contacts {
                display_name: c.display_name.clone().map(cut),
                cards: c.contacts.iter().filter_map(card).take(MAX_CARDS).collect(),
            }));
        }
        let creation = message
            .poll_creation_message_v3
            .as_ref()
            .or(message.poll_creation_message.as_ref())
            .or(message.poll_creation_message_v2.as_ref())
            .or(message.poll_creation_message_v5.as_ref())
            .or(message.poll_creation_message_v6.as_ref());
        if let Some(p) = creation {
            let options: Vec<String> = p
                .options
                .iter()
                .filter_map(|o| o.option_name.clone())
                .take(MAX_POLL_OPTIONS * 4)
                .map(cut)
                .collect();
            if options.is_empty() {
                return None;
            }
            let secret = message
                .message_context_info
                .as_ref()
                .and_then(|i| i.message_secret.as_deref())
                .and_then(MessageSecret::from_slice);
            return Some(Self::Poll {
                poll: Poll {
                    name: cut(p.name.clone().unwrap_or_default()),
                    options,
                    selectable: p.selectable_options_count.unwrap_or_default(),
                },
                secret,
            });
        }
        if let Some(u) = &message.poll_update_message {
            let key = u.poll_creation_message_key.as_ref()?;
            let poll = SenderKey {
                id: key.id.clone().filter(|id| !id.is_empty())?,
                from_me: key.from_me,
                participant: key.participant.as_deref().and_then(|p| p.parse().ok()),
            };
            let vote = u.vote.as_ref().and_then(|v| {
                Some(SealedVote {
                    payload: v.enc_payload.clone()?,
                    iv: v.enc_iv.clone()?,
                })
            });
            return Some(Self::Vote { poll, vote });
        }
        None
    }

    /// The event type of the kind: the content field's name, `poll` for a
    /// poll of any version and `poll_vote` for a vote.
    pub fn kind(&self, message: &Message) -> &'static str {
        match self {
            Self::Location(_) if message.live_location_message.is_some() => "liveLocationMessage",
            Self::Location(_) => "locationMessage",
            Self::Contacts(_) if message.contacts_array_message.is_some() => "contactsArrayMessage",
            Self::Contacts(_) => "contactMessage",
            Self::Poll { .. } => "poll",
            Self::Vote { .. } => "poll_vote",
        }
    }
}

fn degrees(latitude: Option<f64>, longitude: Option<f64>) -> Option<(f64, f64)> {
    let (latitude, longitude) = (latitude?, longitude?);
    (latitude.is_finite() && longitude.is_finite()).then_some((latitude, longitude))
}

fn location(l: &LocationMessage) -> Option<Location> {
    let (latitude, longitude) = degrees(l.degrees_latitude, l.degrees_longitude)?;
    Some(Location {
        latitude,
        longitude,
        name: l.name.clone().map(cut),
        address: l.address.clone().map(cut),
        url: l.url.clone().map(cut),
        live: l.is_live.unwrap_or_default(),
        caption: l.comment.clone().map(cut),
        accuracy_meters: l.accuracy_in_meters,
    })
}

fn card(c: &ContactMessage) -> Option<ContactCard> {
    let vcard = c.vcard.clone().filter(|v| v.len() <= MAX_VCARD_BYTES)?;
    Some(ContactCard {
        display_name: cut(c.display_name.clone().unwrap_or_default()),
        vcard,
    })
}

fn cut(mut text: String) -> String {
    let mut end = MAX_FIELD_BYTES.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// A location to send.
pub fn location_message(l: &Location) -> Message {
    Message {
        location_message: Some(LocationMessage {
            degrees_latitude: Some(l.latitude),
            degrees_longitude: Some(l.longitude),
            name: l.name.clone(),
            address: l.address.clone(),
            url: l.url.clone(),
            comment: l.caption.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Cards to send: one as a `contactMessage`, several as a
/// `contactsArrayMessage`.
pub fn contacts_message(c: &Contacts) -> Message {
    let proto = |card: &ContactCard| ContactMessage {
        display_name: Some(card.display_name.clone()),
        vcard: Some(card.vcard.clone()),
    };
    match c.cards.as_slice() {
        [one] => Message {
            contact_message: Some(proto(one)),
            ..Default::default()
        },
        cards => Message {
            contacts_array_message: Some(ContactsArrayMessage {
                display_name: c.display_name.clone().or_else(|| {
                    Some(format!("{} contacts", cards.len())).filter(|_| !cards.is_empty())
                }),
                contacts: cards.iter().map(proto).collect(),
            }),
            ..Default::default()
        },
    }
}

/// A poll to send, sealed by `secret`: a single choice goes as
/// `pollCreationMessageV3` (as WhatsApp's apps send it), any other as
/// `pollCreationMessage`.
pub fn poll_message(p: &Poll, secret: Option<&MessageSecret>) -> Message {
    let creation = PollCreationMessage {
        name: Some(p.name.clone()),
        options: p
            .options
            .iter()
            .map(|o| PollOption {
                option_name: Some(o.clone()),
            })
            .collect(),
        selectable_options_count: Some(p.selectable),
    };
    let single = p.selectable == 1;
    Message {
        poll_creation_message: (!single).then(|| creation.clone()),
        poll_creation_message_v3: single.then_some(creation),
        message_context_info: secret.map(|s| MessageContextInfo {
            message_secret: Some(s.as_bytes().to_vec()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A vote on the poll `key` for `options`, not yet sealed: its
/// `PollEncValue` carries the plain `PollVoteMessage` and no IV. The
/// sender seals it with [`seal_vote_in`] once it has the poll's secret.
pub fn unsealed_vote(key: MessageKey, options: &[String], now_ms: i64) -> Message {
    let plain = PollVoteMessage {
        selected_options: options.iter().map(|o| option_hash(o).to_vec()).collect(),
    };
    Message {
        poll_update_message: Some(PollUpdateMessage {
            poll_creation_message_key: Some(key),
            vote: Some(PollEncValue {
                enc_payload: Some(plain.encode_to_vec()),
                enc_iv: None,
            }),
            sender_timestamp_ms: Some(now_ms),
        }),
        ..Default::default()
    }
}

/// The id of the poll an unsealed vote in `message` is for, and the
/// option hashes it chose; `None` when `message` holds no unsealed vote.
pub fn unsealed(message: &Message) -> Option<(String, Vec<Vec<u8>>)> {
    let update = message.poll_update_message.as_ref()?;
    let vote = update.vote.as_ref().filter(|v| v.enc_iv.is_none())?;
    let id = update.poll_creation_message_key.as_ref()?.id.clone()?;
    let plain = PollVoteMessage::decode(vote.enc_payload.as_deref().unwrap_or_default()).ok()?;
    Some((id, plain.selected_options))
}

/// Seals the unsealed vote in `message`, cast by `voter` on the poll
/// `creator` made with `secret`.
pub fn seal_vote_in(
    message: &mut Message,
    secret: &MessageSecret,
    creator: &Jid,
    voter: &Jid,
    rng: &mut (impl RngCore + CryptoRng),
) {
    let Some(update) = message.poll_update_message.as_mut() else {
        return;
    };
    let Some(id) = update
        .poll_creation_message_key
        .as_ref()
        .and_then(|k| k.id.clone())
    else {
        return;
    };
    let Some(vote) = update.vote.as_mut() else {
        return;
    };
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut iv);
    let plain = vote.enc_payload.take().unwrap_or_default();
    vote.enc_payload = Some(seal_vote(secret, &id, creator, voter, &iv, &plain));
    vote.enc_iv = Some(iv.to_vec());
}

/// The SHA-256 of an option's name: how a vote names it.
pub fn option_hash(option: &str) -> [u8; 32] {
    sha256(&[option.as_bytes()])
}

/// The key and additional data of a vote by `voter` on poll `poll_id` made
/// by `creator` (both without device).
fn vote_key(
    secret: &MessageSecret,
    poll_id: &str,
    creator: &Jid,
    voter: &Jid,
) -> (Zeroizing<[u8; 32]>, Vec<u8>) {
    let creator = creator.to_non_ad().to_string();
    let voter = voter.to_non_ad().to_string();
    let info = [
        poll_id.as_bytes(),
        creator.as_bytes(),
        voter.as_bytes(),
        POLL_VOTE,
    ]
    .concat();
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(secret.as_bytes(), &[], &info, key.as_mut());
    let aad = [poll_id.as_bytes(), &[0], voter.as_bytes()].concat();
    (key, aad)
}

/// Seals an encoded `PollVoteMessage` with `iv`.
pub fn seal_vote(
    secret: &MessageSecret,
    poll_id: &str,
    creator: &Jid,
    voter: &Jid,
    iv: &[u8; IV_LEN],
    plain: &[u8],
) -> Vec<u8> {
    let (key, aad) = vote_key(secret, poll_id, creator, voter);
    Aes256Gcm::new(key.as_ref().into())
        .encrypt(
            Nonce::from_slice(iv),
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .unwrap_or_default()
}

/// Opens a sealed vote: the option hashes it chose.
pub fn open_vote(
    secret: &MessageSecret,
    poll_id: &str,
    creator: &Jid,
    voter: &Jid,
    vote: &SealedVote,
) -> Result<Vec<Vec<u8>>, VoteError> {
    if vote.iv.len() != IV_LEN {
        return Err(VoteError::Seal);
    }
    let (key, aad) = vote_key(secret, poll_id, creator, voter);
    let plain = Aes256Gcm::new(key.as_ref().into())
        .decrypt(
            Nonce::from_slice(&vote.iv),
            Payload {
                msg: &vote.payload,
                aad: &aad,
            },
        )
        .map_err(|_| VoteError::Seal)?;
    PollVoteMessage::decode(plain.as_slice())
        .map(|v| v.selected_options)
        .map_err(|_| VoteError::Malformed)
}

/// The options of `options` whose hashes `hashes` names, in the poll's
/// order; hashes of no option are left out.
pub fn chosen(options: &[String], hashes: &[Vec<u8>]) -> Vec<String> {
    options
        .iter()
        .filter(|o| hashes.iter().any(|h| h.as_slice() == option_hash(o)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn jid(s: &str) -> Jid {
        s.parse().expect("jid")
    }

    fn round_trip(message: &Message) -> Message {
        Message::decode(message.encode_to_vec().as_slice()).expect("decodes")
    }

    #[test]
    fn locations_and_cards_read_back() {
        let place = Location {
            latitude: 52.52,
            longitude: 13.405,
            name: Some("Alexanderplatz".into()),
            address: Some("Berlin".into()),
            url: Some("https://example.org/a".into()),
            ..Default::default()
        };
        let message = round_trip(&location_message(&place));
        assert_eq!(Rich::read(&message), Some(Rich::Location(place)));
        assert_eq!(
            Rich::read(&message).map(|r| r.kind(&message)),
            Some("locationMessage")
        );
        let card = ContactCard {
            display_name: "Ann".into(),
            vcard: "BEGIN:VCARD\nVERSION:3.0\nFN:Ann\nEND:VCARD".into(),
        };
        let one = Contacts {
            display_name: None,
            cards: vec![card.clone()],
        };
        let message = round_trip(&contacts_message(&one));
        assert!(message.contact_message.is_some());
        assert_eq!(Rich::read(&message), Some(Rich::Contacts(one)));
        let two = Contacts {
            display_name: Some("Friends".into()),
            cards: vec![card.clone(), card],
        };
        let message = round_trip(&contacts_message(&two));
        assert_eq!(
            Rich::read(&message).map(|r| r.kind(&message)),
            Some("contactsArrayMessage")
        );
        assert_eq!(Rich::read(&message), Some(Rich::Contacts(two)));
    }

    #[test]
    fn unusable_content_reads_as_nothing() {
        let nan = Message {
            location_message: Some(LocationMessage {
                degrees_latitude: Some(f64::NAN),
                degrees_longitude: Some(1.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(Rich::read(&nan), None);
        let empty_poll = poll_message(&Poll::default(), None);
        assert_eq!(Rich::read(&empty_poll), None);
        let keyless = Message {
            poll_update_message: Some(PollUpdateMessage::default()),
            ..Default::default()
        };
        assert_eq!(Rich::read(&keyless), None);
    }

    #[test]
    fn a_vote_seals_and_opens_only_for_its_poll_and_voter() {
        let mut rng = StdRng::seed_from_u64(7);
        let secret = MessageSecret::generate(&mut rng);
        let poll = Poll {
            name: "Lunch?".into(),
            options: vec!["pizza".into(), "salad".into(), "soup".into()],
            selectable: 0,
        };
        let message = round_trip(&poll_message(&poll, Some(&secret)));
        let Some(Rich::Poll {
            poll: read,
            secret: Some(read_secret),
        }) = Rich::read(&message)
        else {
            panic!("a poll with its secret");
        };
        assert_eq!((read, &read_secret), (poll.clone(), &secret));

        let creator = jid("15550001111@s.whatsapp.net");
        let voter = jid("15550002222:3@s.whatsapp.net");
        let key = MessageKey {
            remote_jid: Some(creator.to_string()),
            from_me: Some(false),
            id: Some("3EB0POLL".into()),
            participant: None,
        };
        let mut vote = unsealed_vote(key, &["soup".into(), "pizza".into()], 1);
        assert_eq!(
            unsealed(&vote).map(|(id, hashes)| (id, hashes.len())),
            Some(("3EB0POLL".into(), 2))
        );
        seal_vote_in(&mut vote, &secret, &creator, &voter, &mut rng);
        assert_eq!(unsealed(&vote), None, "sealed");
        let Some(Rich::Vote {
            poll: target,
            vote: Some(sealed),
        }) = Rich::read(&round_trip(&vote))
        else {
            panic!("a sealed vote");
        };
        assert_eq!(target.id, "3EB0POLL");
        let hashes = open_vote(&secret, "3EB0POLL", &creator, &voter, &sealed).expect("opens");
        assert_eq!(chosen(&poll.options, &hashes), vec!["pizza", "soup"]);
        // Another voter, poll or secret does not open it.
        let other = jid("15550003333@s.whatsapp.net");
        assert_eq!(
            open_vote(&secret, "3EB0POLL", &creator, &other, &sealed),
            Err(VoteError::Seal)
        );
        assert_eq!(
            open_vote(&secret, "3EB0OTHER", &creator, &voter, &sealed),
            Err(VoteError::Seal)
        );
        let wrong = MessageSecret::generate(&mut rng);
        assert_eq!(
            open_vote(&wrong, "3EB0POLL", &creator, &voter, &sealed),
            Err(VoteError::Seal)
        );
        let short = SealedVote {
            payload: sealed.payload.clone(),
            iv: vec![0; 3],
        };
        assert_eq!(
            open_vote(&secret, "3EB0POLL", &creator, &voter, &short),
            Err(VoteError::Seal)
        );
    }

    /// Made by Baileys' own functions for fixed inputs and checked there
    /// with its `decryptPollVote` (`tests/interop/poll-vote.js gen`).
    const VECTORS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/poll/baileys.json"
    ));

    #[test]
    fn baileys_votes_open_and_ours_seal_the_same() {
        let v: serde_json::Value = serde_json::from_str(VECTORS).expect("vector file is JSON");
        let bytes = |name: &str| hex::decode(v[name].as_str().expect(name)).expect("hex");
        let text = |name: &str| v[name].as_str().expect(name).to_owned();
        let list = |name: &str| -> Vec<String> {
            v[name]
                .as_array()
                .expect(name)
                .iter()
                .map(|o| o.as_str().expect("string").to_owned())
                .collect()
        };
        let secret = MessageSecret::from_slice(&bytes("secret")).expect("32 bytes");
        let (poll_id, creator, voter) =
            (text("poll_id"), jid(&text("creator")), jid(&text("voter")));
        let sealed = SealedVote {
            payload: bytes("payload"),
            iv: bytes("iv"),
        };
        let hashes = open_vote(&secret, &poll_id, &creator, &voter, &sealed).expect("opens");
        assert_eq!(
            hashes.iter().map(hex::encode).collect::<Vec<_>>(),
            list("chosen_hashes")
        );
        // Named in the poll's order, whatever order the vote lists them.
        assert_eq!(chosen(&list("options"), &hashes), vec!["pizza", "soup"]);
        let plain = PollVoteMessage {
            selected_options: list("chosen")
                .iter()
                .map(|o| option_hash(o).to_vec())
                .collect(),
        };
        let iv: [u8; IV_LEN] = bytes("iv").try_into().expect("12 bytes");
        let ours = seal_vote(
            &secret,
            &poll_id,
            &creator,
            &voter,
            &iv,
            &plain.encode_to_vec(),
        );
        assert_eq!(ours, bytes("payload"), "the same bytes as Baileys'");
    }

    #[test]
    fn every_poll_version_reads_as_a_poll() {
        let creation = PollCreationMessage {
            name: Some("q".into()),
            options: vec![PollOption {
                option_name: Some("a".into()),
            }],
            selectable_options_count: Some(0),
        };
        let versions = [
            Message {
                poll_creation_message_v2: Some(creation.clone()),
                ..Default::default()
            },
            Message {
                poll_creation_message_v5: Some(creation.clone()),
                ..Default::default()
            },
            Message {
                poll_creation_message_v6: Some(creation),
                ..Default::default()
            },
        ];
        for message in versions {
            let message = round_trip(&message);
            let rich = Rich::read(&message).expect("a poll");
            assert_eq!(rich.kind(&message), "poll");
            assert_eq!(crate::wa::compose::stanza_marks(&message), ("poll", None));
        }
    }

    #[test]
    fn a_single_choice_poll_is_v3() {
        let poll = Poll {
            name: "One".into(),
            options: vec!["a".into(), "b".into()],
            selectable: 1,
        };
        let message = poll_message(&poll, None);
        assert!(message.poll_creation_message_v3.is_some());
        assert!(message.poll_creation_message.is_none());
    }
}
