//! What a `Send` without media asks the messenger for: the content for a
//! recipient, built into the message the engine sends, with what
//! identifies a retry of it.

use crate::wa::compose::Compose;
use crate::wa::jid::Jid;
use crate::wa::messaging::SendRequest;

/// A text (or reaction, edit, revoke, vote, location, contact cards, poll)
/// to send.
#[derive(Debug, Clone)]
pub struct OutgoingText {
    pub to: Jid,
    pub content: Compose,
    pub idempotency_key: Option<String>,
}

impl OutgoingText {
    /// A plain text.
    pub fn text(to: Jid, text: impl Into<String>, idempotency_key: Option<String>) -> Self {
        Self {
            to,
            content: Compose::Text {
                text: text.into(),
                quote: None,
                mentions: Vec::new(),
            },
            idempotency_key,
        }
    }

    /// The engine's request, sent by `own` at `now_ms`.
    pub(crate) fn request(self, own: &Jid, now_ms: u64) -> SendRequest {
        // Reactions, edits and votes carry the time they were made: a
        // retry is recognised by the message built at time zero.
        let fingerprint = matches!(
            self.content,
            Compose::Reaction { .. } | Compose::Edit { .. } | Compose::PollVote { .. }
        )
        .then(|| {
            let zero = self.content.message(&self.to, own, 0);
            let encoded = prost::Message::encode_to_vec(&zero);
            crate::wa::crypto::sha256(&[self.to.to_string().as_bytes(), &[0], &encoded]).to_vec()
        });
        SendRequest {
            message: self.content.message(&self.to, own, now_ms),
            to: self.to,
            idempotency_key: self.idempotency_key,
            fingerprint,
        }
    }
}
