//! The engine's part in media: the media hosts (`media_conn`, cached until
//! their ttl), the receipt asking a phone to upload a file again, and the
//! idempotency record read before a media send is built (its upload is
//! the costly part). The file transfers themselves are the owner's.

use crate::wa::binary::Node;
use crate::wa::creds::Credentials;
use crate::wa::jid::Jid;
use crate::wa::media::{MediaInfo, MediaKey, MediaType, RetryTarget};

use super::iq::{self, Awaiting};
use super::{Engine, KeyStore, ReplyTo, SendError, Sent, Step, StepError, SEND_TIMEOUT_MS};

/// What the idempotency record says about a key before a send is built
/// (see [`Engine::idempotency_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyState {
    /// Never used: build and send.
    Unused,
    /// Acknowledged: this is the answer.
    Sent(Sent),
    /// Encrypted (perhaps written) but not acknowledged: a send with the
    /// same key and fingerprint writes the stored stanza again, whatever
    /// message it carries.
    Pending,
}

/// The media of a message, as events report it: what it is, not how to
/// fetch it (that is the [`MediaRecord`](super::MediaRecord) committed
/// with the event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMedia {
    pub ty: MediaType,
    pub mimetype: String,
    pub caption: Option<String>,
    pub file_name: Option<String>,
    pub file_length: u64,
    pub file_sha256: [u8; 32],
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub seconds: Option<u32>,
}

impl ReceivedMedia {
    pub fn of(info: &MediaInfo) -> Self {
        Self {
            ty: info.ty,
            mimetype: info.mimetype.clone(),
            caption: info.caption.clone(),
            file_name: info.file_name.clone(),
            file_length: info.file_length,
            file_sha256: info.file_sha256,
            width: info.width,
            height: info.height,
            seconds: info.seconds,
        }
    }
}

impl Engine {
    /// The media hosts and upload auth: the cached answer while it is
    /// valid (unless `refresh`, after a host refused it), else a
    /// `media_conn` iq whose answer goes to every caller waiting on it.
    pub fn handle_media_conn(&mut self, refresh: bool, reply: ReplyTo, now_ms: u64) -> Step {
        let mut step = Step::default();
        if refresh {
            self.media_conn = None;
        }
        if let Some((conn, expires_s)) = &self.media_conn {
            if *expires_s > now_ms / 1000 {
                step.media_conns.push((reply, Ok(conn.clone())));
                return step;
            }
        }
        // Callers asking while an iq is out wait on it; one unanswered for
        // too long is asked again (its callers move to the new one).
        let pending = self
            .awaiting
            .iter()
            .find(|(_, a)| matches!(a, Awaiting::MediaConn(_)))
            .map(|(id, _)| id.clone());
        let fresh = self
            .media_conn_asked_ms
            .is_some_and(|at| at + SEND_TIMEOUT_MS > now_ms);
        let mut waiters = Vec::new();
        if let Some(id) = pending {
            if fresh {
                if let Some(Awaiting::MediaConn(waiting)) = self.awaiting.get_mut(&id) {
                    waiting.push(reply);
                }
                return step;
            }
            if let Some(Awaiting::MediaConn(waiting)) = self.awaiting.remove(&id) {
                waiters = waiting;
            }
        }
        waiters.push(reply);
        self.media_conn_asked_ms = Some(now_ms);
        self.issue(iq::MediaConnQuery, Awaiting::MediaConn(waiters), &mut step);
        step
    }

    /// The receipt asking our phone to upload `target`'s media again (its
    /// download is gone); the answer comes as a `mediaretry` notification
    /// in [`Step::media_retries`]. `None` before login.
    pub fn media_retry_receipt(
        &mut self,
        target: &RetryTarget,
        media_key: &MediaKey,
        creds: &Credentials,
    ) -> Option<Node> {
        let own = &creds.account.as_ref()?.jid;
        let mut iv = [0u8; 12];
        rand::RngCore::fill_bytes(&mut self.rng, &mut iv);
        Some(crate::wa::media::media_retry_receipt(
            target, own, media_key, iv,
        ))
    }

    /// What the idempotency record of `key` says, checked against the
    /// request's `fingerprint` (a key used for another request is
    /// [`SendError::IdempotencyConflict`]). Lets the owner answer a retry
    /// before doing costly work (uploading media) for it.
    pub fn idempotency_of(
        &mut self,
        key: &str,
        fingerprint: &[u8],
        to: &Jid,
        keys: &mut dyn KeyStore,
    ) -> Result<Result<IdempotencyState, SendError>, StepError> {
        let conflict = || Err(SendError::IdempotencyConflict(key.to_owned()));
        if let Some(send) = self.send_by_key(key) {
            // Not stored yet (it may still fail before it is): the caller
            // builds its message, and the engine joins it to this one.
            return Ok(if send.fingerprint != fingerprint {
                conflict()
            } else {
                Ok(IdempotencyState::Unused)
            });
        }
        let record = keys.idempotency(key).map_err(Step::abandoned)?;
        Ok(match record {
            None => Ok(IdempotencyState::Unused),
            Some(r) if !r.fingerprint.is_empty() && r.fingerprint != fingerprint => conflict(),
            Some(r) if r.acked_at_s > 0 => Ok(IdempotencyState::Sent(Sent::to(
                r.message_id,
                r.acked_at_s,
                &to.to_non_ad(),
                &mut super::Txn::new(keys),
            ))),
            // Only a stored stanza can be sent again without its message.
            Some(r) if !r.stanza.is_empty() => Ok(IdempotencyState::Pending),
            Some(_) => Ok(IdempotencyState::Unused),
        })
    }
}
