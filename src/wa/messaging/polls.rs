//! Polls in the engine: a poll sent gets a fresh message secret, kept with
//! its options under the poll's message id (in the step that first sends
//! it, so it is committed before a byte reaches the wire); a poll received
//! keeps the secret it carries; a vote sent is sealed, and a vote received
//! opened, with its poll's secret, and named by the poll's options.

use rand::{CryptoRng, RngCore};

use crate::proto::wa::{Message, MessageContextInfo};
use crate::wa::content::{self, MessageSecret, Rich};
use crate::wa::jid::Jid;

use super::keys::{KeyError, PollRecord, Txn};
use super::{ReceivedContent, SendError};

/// Readies `message` (id `id`, sent by `own`) for the wire: a poll gets its
/// secret, kept for the votes; an unsealed vote is sealed. Anything else is
/// left alone.
pub(super) fn prepare_send(
    message: &mut Message,
    id: &str,
    own: &Jid,
    rng: &mut (impl RngCore + CryptoRng),
    txn: &mut Txn<'_>,
) -> Result<Result<(), SendError>, KeyError> {
    if let Some((poll_id, hashes)) = content::unsealed(message) {
        let Some(record) = txn.poll(&poll_id)? else {
            return Ok(Err(SendError::UnknownPoll(poll_id)));
        };
        let (Some(secret), Ok(creator)) = (
            MessageSecret::from_slice(&record.secret),
            record.creator.parse::<Jid>(),
        ) else {
            return Ok(Err(SendError::UnknownPoll(poll_id)));
        };
        let known = content::chosen(&record.options, &hashes);
        if known.len() != hashes.len() {
            return Ok(Err(SendError::InvalidVote(format!(
                "an option chosen is not one of poll {poll_id}'s options"
            ))));
        }
        let limit = usize::try_from(record.selectable).unwrap_or(usize::MAX);
        if record.selectable > 0 && hashes.len() > limit {
            return Ok(Err(SendError::InvalidVote(format!(
                "poll {poll_id} allows at most {limit} option(s), {} chosen",
                hashes.len()
            ))));
        }
        content::seal_vote_in(message, &secret, &creator, &own.to_non_ad(), rng);
        return Ok(Ok(()));
    }
    let has_secret = message
        .message_context_info
        .as_ref()
        .is_some_and(|i| i.message_secret.is_some());
    if has_secret {
        return Ok(Ok(()));
    }
    if let Some(Rich::Poll { poll, .. }) = Rich::read(message) {
        let secret = MessageSecret::generate(rng);
        message
            .message_context_info
            .get_or_insert_with(MessageContextInfo::default)
            .message_secret = Some(secret.as_bytes().to_vec());
        txn.put_poll(
            id.to_owned(),
            PollRecord {
                secret: secret.as_bytes().to_vec(),
                creator: own.to_non_ad().to_string(),
                options: poll.options,
                selectable: poll.selectable,
            },
        );
    }
    Ok(Ok(()))
}

/// What an arriving (or acknowledged own) message `id` that `sender` sent
/// in `chat` carries, seen by `own`: a poll's secret is kept, a vote is
/// opened.
pub(super) fn received(
    rich: Rich,
    id: &str,
    sender: &Jid,
    chat: &Jid,
    own: &Jid,
    txn: &mut Txn<'_>,
) -> Result<ReceivedContent, KeyError> {
    Ok(match rich {
        Rich::Location(location) => ReceivedContent::Location(location),
        Rich::Contacts(contacts) => ReceivedContent::Contacts(contacts),
        Rich::Poll { poll, secret } => {
            let known = txn.poll(id)?.is_some();
            if let (Some(secret), false) = (secret, known) {
                txn.put_poll(
                    id.to_owned(),
                    PollRecord {
                        secret: secret.as_bytes().to_vec(),
                        creator: sender.to_non_ad().to_string(),
                        options: poll.options.clone(),
                        selectable: poll.selectable,
                    },
                );
            }
            ReceivedContent::Poll(poll)
        }
        Rich::Vote { poll, vote } => {
            let target = crate::wa::compose::as_seen_by(&poll, sender, chat, own, true);
            let options = match (txn.poll(&poll.id)?, vote) {
                (None, _) => Err(format!(
                    "poll {} is unknown to this session: its secret never arrived",
                    poll.id
                )),
                (Some(_), None) => Err("the vote carries nothing sealed".to_owned()),
                (Some(record), Some(vote)) => open(&record, &poll.id, sender, &vote),
            };
            ReceivedContent::Vote {
                poll: target,
                options,
            }
        }
    })
}

fn open(
    record: &PollRecord,
    poll_id: &str,
    voter: &Jid,
    vote: &content::SealedVote,
) -> Result<Vec<String>, String> {
    let secret =
        MessageSecret::from_slice(&record.secret).ok_or("the poll's secret is unusable")?;
    let creator: Jid = record
        .creator
        .parse()
        .map_err(|_| "the poll's creator is unusable".to_owned())?;
    let hashes =
        content::open_vote(&secret, poll_id, &creator, voter, vote).map_err(|e| e.to_string())?;
    Ok(content::chosen(&record.options, &hashes))
}
