//! Media retry: a device that finds a file gone from the media hosts (404 or
//! 410) asks its account's phone to upload it again, and the phone answers
//! with the new direct path. Both directions are built and parsed here, so
//! the simulator's phones can answer what clients ask.
//!
//! Facts (whatsmeow `mediaretry.go`, Baileys `encryptMediaRetryRequest`,
//! `decodeMediaRetryNode`): the key is HKDF-SHA256(media key, no salt,
//! "WhatsApp Media Retry Notification", 32 bytes); both payloads are
//! AES-256-GCM with a 12-byte IV and the message id as associated data.
//!
//! Request: `<receipt id=MSG to=OWN_ACCOUNT type="server-error"><encrypt>
//! <enc_p>GCM(ServerErrorReceipt)</enc_p><enc_iv/></encrypt><rmr jid=CHAT
//! from_me=BOOL [participant=SENDER]/></receipt>`.
//! Answer: `<notification id=MSG type="mediaretry" from t><rmr …/>` then
//! `<encrypt>` with GCM(MediaRetryNotification), or `<error code/>`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use prost::Message as _;
use zeroize::Zeroizing;

use super::MediaKey;
use crate::proto::wa::media_retry_notification::ResultType;
use crate::proto::wa::{MediaRetryNotification, ServerErrorReceipt};
use crate::wa::binary::Node;
use crate::wa::crypto::hkdf_sha256;
use crate::wa::jid::Jid;

const RETRY_INFO: &[u8] = b"WhatsApp Media Retry Notification";
/// Largest encrypted payload accepted (real ones are well under 1 KiB).
const MAX_PAYLOAD: usize = 16 * 1024;

/// Why a media retry stanza or payload is unusable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RetryError {
    #[error("media retry stanza has no {0}")]
    Missing(&'static str),
    #[error("media retry IV is {0} bytes, not 12")]
    BadIv(usize),
    #[error("media retry payload does not decrypt under this media key and message id")]
    Decrypt,
    #[error("media retry payload is not a valid protobuf")]
    Protobuf,
    #[error("media retry payload names message {payload:?}, the stanza {stanza:?}")]
    WrongMessage { stanza: String, payload: String },
    #[error("media retry payload is larger than {MAX_PAYLOAD} bytes")]
    TooLarge,
}

/// The message a retry is about, as the `<rmr>` node names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryTarget {
    pub message_id: String,
    /// The chat the message is in.
    pub chat: Jid,
    /// Whether the asking account sent the message.
    pub from_me: bool,
    /// The sender in a group chat.
    pub participant: Option<Jid>,
}

/// A parsed `server-error` receipt: which message's media is wanted again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRequest {
    pub target: RetryTarget,
    /// The account the receipt was addressed to.
    pub to: Option<Jid>,
    pub ciphertext: Vec<u8>,
    pub iv: [u8; 12],
}

/// What the phone's re-upload gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryResult {
    /// Uploaded again: download from this path.
    Success {
        direct_path: String,
    },
    /// The phone no longer has the file.
    NotFound,
    /// The phone could not decrypt the request.
    DecryptionError,
    GeneralError,
}

/// A parsed `mediaretry` notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRetry {
    pub target: RetryTarget,
    pub timestamp: Option<u64>,
    pub outcome: MediaRetryOutcome,
}

/// The body of a `mediaretry` notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaRetryOutcome {
    /// Decrypt with [`decrypt_retry_notification`].
    Encrypted { ciphertext: Vec<u8>, iv: [u8; 12] },
    /// The server or phone refused (code 2: the phone has no such media).
    Error { code: u32 },
}

fn retry_cipher(media_key: &MediaKey) -> Aes256Gcm {
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(media_key.as_bytes(), &[], RETRY_INFO, key.as_mut());
    Aes256Gcm::new(key.as_ref().into())
}

fn seal(media_key: &MediaKey, message_id: &str, iv: &[u8; 12], plaintext: &[u8]) -> Vec<u8> {
    retry_cipher(media_key)
        .encrypt(
            iv.into(),
            Payload {
                msg: plaintext,
                aad: message_id.as_bytes(),
            },
        )
        .expect("AES-GCM encrypts any payload under 64 GiB")
}

fn open(
    media_key: &MediaKey,
    message_id: &str,
    iv: &[u8; 12],
    ciphertext: &[u8],
) -> Result<Vec<u8>, RetryError> {
    if ciphertext.len() > MAX_PAYLOAD {
        return Err(RetryError::TooLarge);
    }
    retry_cipher(media_key)
        .decrypt(
            iv.into(),
            Payload {
                msg: ciphertext,
                aad: message_id.as_bytes(),
            },
        )
        .map_err(|_| RetryError::Decrypt)
}

fn rmr(target: &RetryTarget) -> Node {
    let node = Node::new("rmr")
        .attr("jid", &target.chat)
        .attr("from_me", if target.from_me { "true" } else { "false" });
    match &target.participant {
        Some(participant) => node.attr("participant", participant),
        None => node,
    }
}

fn encrypt_node(ciphertext: Vec<u8>, iv: &[u8; 12]) -> Node {
    Node::new("encrypt").children(vec![
        Node::new("enc_p").bytes(ciphertext),
        Node::new("enc_iv").bytes(iv.to_vec()),
    ])
}

fn parse_target(node: &Node) -> Result<RetryTarget, RetryError> {
    let message_id = node
        .attr_string("id")
        .filter(|id| !id.is_empty())
        .ok_or(RetryError::Missing("id"))?;
    let rmr = node.child("rmr").ok_or(RetryError::Missing("rmr"))?;
    Ok(RetryTarget {
        message_id,
        chat: rmr.attr_jid("jid").ok_or(RetryError::Missing("rmr jid"))?,
        from_me: rmr.attr_str("from_me") == Some("true"),
        participant: rmr.attr_jid("participant"),
    })
}

fn parse_encrypt(node: &Node) -> Result<(Vec<u8>, [u8; 12]), RetryError> {
    let encrypt = node
        .child("encrypt")
        .ok_or(RetryError::Missing("encrypt"))?;
    let ciphertext = encrypt
        .child("enc_p")
        .and_then(Node::content_bytes)
        .ok_or(RetryError::Missing("enc_p"))?;
    if ciphertext.len() > MAX_PAYLOAD {
        return Err(RetryError::TooLarge);
    }
    let iv = encrypt
        .child("enc_iv")
        .and_then(Node::content_bytes)
        .ok_or(RetryError::Missing("enc_iv"))?;
    let iv: [u8; 12] = iv.try_into().map_err(|_| RetryError::BadIv(iv.len()))?;
    Ok((ciphertext.to_vec(), iv))
}

/// The receipt a device sends to its own account (`own`, a bare JID) to
/// ask for `target`'s media again. `iv` is 12 random bytes.
pub fn media_retry_receipt(
    target: &RetryTarget,
    own: &Jid,
    media_key: &MediaKey,
    iv: [u8; 12],
) -> Node {
    let plaintext = ServerErrorReceipt {
        stanza_id: Some(target.message_id.clone()),
    }
    .encode_to_vec();
    let ciphertext = seal(media_key, &target.message_id, &iv, &plaintext);
    Node::new("receipt")
        .attr("id", target.message_id.as_str())
        .attr("to", own.to_non_ad())
        .attr("type", "server-error")
        .children(vec![encrypt_node(ciphertext, &iv), rmr(target)])
}

/// Reads a `server-error` receipt (the phone's side).
pub fn parse_retry_receipt(node: &Node) -> Result<RetryRequest, RetryError> {
    let target = parse_target(node)?;
    let (ciphertext, iv) = parse_encrypt(node)?;
    Ok(RetryRequest {
        target,
        to: node.attr_jid("to"),
        ciphertext,
        iv,
    })
}

/// Checks a retry request against the media key of the message it names:
/// only a holder of the key can ask, and only for that message.
pub fn decrypt_retry_receipt(
    request: &RetryRequest,
    media_key: &MediaKey,
) -> Result<(), RetryError> {
    let id = &request.target.message_id;
    let plaintext = open(media_key, id, &request.iv, &request.ciphertext)?;
    let receipt =
        ServerErrorReceipt::decode(plaintext.as_slice()).map_err(|_| RetryError::Protobuf)?;
    let named = receipt.stanza_id.unwrap_or_default();
    if named != *id {
        return Err(RetryError::WrongMessage {
            stanza: id.clone(),
            payload: named,
        });
    }
    Ok(())
}

/// The encrypted `MediaRetryNotification` for `result`. `iv` is 12 random
/// bytes.
pub fn encrypt_retry_notification(
    media_key: &MediaKey,
    message_id: &str,
    result: &RetryResult,
    iv: &[u8; 12],
) -> Vec<u8> {
    let (kind, direct_path) = match result {
        RetryResult::Success { direct_path } => (ResultType::Success, Some(direct_path.clone())),
        RetryResult::NotFound => (ResultType::NotFound, None),
        RetryResult::DecryptionError => (ResultType::DecryptionError, None),
        RetryResult::GeneralError => (ResultType::GeneralError, None),
    };
    let plaintext = MediaRetryNotification {
        stanza_id: Some(message_id.to_owned()),
        direct_path,
        result: Some(kind as i32),
    }
    .encode_to_vec();
    seal(media_key, message_id, iv, &plaintext)
}

/// `<notification type="mediaretry">` carrying an encrypted answer, sent
/// from the account `from` at unix second `t`.
pub fn retry_notification(
    target: &RetryTarget,
    from: &Jid,
    t: u64,
    ciphertext: Vec<u8>,
    iv: &[u8; 12],
) -> Node {
    notification(target, from, t).children(vec![rmr(target), encrypt_node(ciphertext, iv)])
}

/// `<notification type="mediaretry">` with `<error code/>`: no answer can
/// be given (2: the phone has no such media).
pub fn retry_error_notification(target: &RetryTarget, from: &Jid, t: u64, code: u32) -> Node {
    notification(target, from, t).children(vec![rmr(target), Node::new("error").attr("code", code)])
}

fn notification(target: &RetryTarget, from: &Jid, t: u64) -> Node {
    Node::new("notification")
        .attr("from", from.to_non_ad())
        .attr("type", "mediaretry")
        .attr("id", target.message_id.as_str())
        .attr("t", t)
}

/// Reads a `mediaretry` notification (the asking device's side).
pub fn parse_retry_notification(node: &Node) -> Result<MediaRetry, RetryError> {
    let target = parse_target(node)?;
    let outcome = match node.child("error") {
        Some(error) => MediaRetryOutcome::Error {
            code: error
                .attr_u64("code")
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0),
        },
        None => {
            let (ciphertext, iv) = parse_encrypt(node)?;
            MediaRetryOutcome::Encrypted { ciphertext, iv }
        }
    };
    Ok(MediaRetry {
        target,
        timestamp: node.attr_u64("t"),
        outcome,
    })
}

/// Decrypts a notification's answer with the media key of `message_id`.
pub fn decrypt_retry_notification(
    media_key: &MediaKey,
    message_id: &str,
    ciphertext: &[u8],
    iv: &[u8; 12],
) -> Result<RetryResult, RetryError> {
    let plaintext = open(media_key, message_id, iv, ciphertext)?;
    let notification =
        MediaRetryNotification::decode(plaintext.as_slice()).map_err(|_| RetryError::Protobuf)?;
    let named = notification.stanza_id.clone().unwrap_or_default();
    if named != message_id {
        return Err(RetryError::WrongMessage {
            stanza: message_id.to_owned(),
            payload: named,
        });
    }
    Ok(
        match ResultType::try_from(notification.result.unwrap_or(0))
            .unwrap_or(ResultType::GeneralError)
        {
            ResultType::Success => match notification.direct_path {
                Some(direct_path) if !direct_path.is_empty() => {
                    RetryResult::Success { direct_path }
                }
                _ => return Err(RetryError::Missing("direct_path")),
            },
            ResultType::NotFound => RetryResult::NotFound,
            ResultType::DecryptionError => RetryResult::DecryptionError,
            ResultType::GeneralError => RetryResult::GeneralError,
        },
    )
}
