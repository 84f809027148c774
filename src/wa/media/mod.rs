//! WhatsApp media, sans-IO: the per-type keys derived from a message's media
//! key, streaming encryption and decryption of the uploaded body, the
//! `media_conn` iq, upload and download URLs, and the media retry exchange.
//! Bytes in, bytes out: must not import tokio, the store, the clock or `sim`.
//!
//! The file format (WhatsApp Web, whatsmeow `download.go`/`upload.go`,
//! Baileys `messages-media`): HKDF-SHA256 of the 32-byte media key with a
//! per-type info string gives 112 bytes: IV, AES key, MAC key and ref key.
//! The uploaded body is `AES-256-CBC/PKCS7(plaintext) ‖ HMAC-SHA256(mac key,
//! IV ‖ ciphertext)[..10]`; the message carries `file_sha256` (of the
//! plaintext), `file_enc_sha256` (of the whole body) and `file_length`.
//!
//! How the pieces fit:
//! * Sending: [`MediaKey::generate`], then [`Encryptor`] over the file into a
//!   temporary file (the upload URL carries `file_enc_sha256`, known only at
//!   the end, so the body is uploaded after it is written); a `media_conn`
//!   iq ([`media_conn_query`], [`parse_media_conn`], cached until
//!   [`MediaConn::expires_at`]); `POST` the body to [`upload_url`] and read
//!   [`parse_upload_answer`]; put a [`MediaInfo`] in the message
//!   ([`MediaInfo::to_message`]) and send it with `type="media"` and
//!   [`MediaType::enc_mediatype`] on each `<enc>`.
//! * Receiving: [`MediaInfo::from_message`]; `GET` [`download_url`] on each
//!   host in turn (another host when [`MediaError::is_retryable`]) through a
//!   [`Decryptor`] with [`MediaInfo::expected`], keeping the output only if
//!   [`Decryptor::finish`] succeeds. On 404 or 410, send
//!   [`media_retry_receipt`]; the answer is a `mediaretry` notification
//!   ([`parse_retry_notification`], [`decrypt_retry_notification`]) with a
//!   new direct path.

mod cipher;
mod conn;
#[cfg(target_arch = "x86_64")]
mod fused;
mod hash;
mod message;
mod retry;

use std::fmt;

use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::wa::crypto::hkdf_sha256;

pub use cipher::{
    body_len, ciphertext_len, DecryptedMedia, Decryptor, EncryptedMedia, Encryptor, Expected,
    MediaError,
};
pub use conn::{
    download_url, media_conn_node, media_conn_query, parse_media_conn, parse_upload_answer,
    upload_answer_json, upload_token, upload_url, MediaConn, MediaConnError, MediaHost, Scheme,
    UploadAnswer,
};
pub use message::MediaInfo;
pub use retry::{
    decrypt_retry_notification, decrypt_retry_receipt, encrypt_retry_notification,
    media_retry_receipt, parse_retry_notification, parse_retry_receipt, retry_error_notification,
    retry_notification, MediaRetry, MediaRetryOutcome, RetryError, RetryRequest, RetryResult,
    RetryTarget,
};

/// Length of the truncated HMAC that ends every uploaded body.
pub const MAC_LEN: usize = 10;
/// Length of a media key.
pub const MEDIA_KEY_LEN: usize = 32;
/// AES block length: the ciphertext is always a whole number of these.
pub const BLOCK_LEN: usize = 16;

/// What a media file is, as far as keys, upload paths and the `<enc
/// mediatype>` attribute are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaType {
    Image,
    Video,
    /// An audio file (music, recordings sent as files).
    Audio,
    /// A voice note (`ptt`): audio keys and path, its own `mediatype`.
    VoiceNote,
    Document,
    /// Stickers use the image keys and are uploaded as images.
    Sticker,
    /// History sync blobs sent to a newly linked device.
    History,
    /// App state (contacts, chat settings) snapshots and patches.
    AppState,
    /// The thumbnail of a link preview.
    LinkThumbnail,
}

impl MediaType {
    /// Every type, for lookups by path segment or name.
    pub const ALL: [MediaType; 9] = [
        MediaType::Image,
        MediaType::Video,
        MediaType::Audio,
        MediaType::VoiceNote,
        MediaType::Document,
        MediaType::Sticker,
        MediaType::History,
        MediaType::AppState,
        MediaType::LinkThumbnail,
    ];

    /// The HKDF info string of the type's keys.
    pub fn hkdf_info(self) -> &'static str {
        match self {
            MediaType::Image | MediaType::Sticker => "WhatsApp Image Keys",
            MediaType::Video => "WhatsApp Video Keys",
            MediaType::Audio | MediaType::VoiceNote => "WhatsApp Audio Keys",
            MediaType::Document => "WhatsApp Document Keys",
            MediaType::History => "WhatsApp History Keys",
            MediaType::AppState => "WhatsApp App State Keys",
            MediaType::LinkThumbnail => "WhatsApp Link Thumbnail Keys",
        }
    }

    /// The path segment of uploads: `POST /mms/{this}/{token}`.
    pub fn mms_type(self) -> &'static str {
        match self {
            MediaType::Image | MediaType::Sticker => "image",
            MediaType::Video => "video",
            MediaType::Audio | MediaType::VoiceNote => "audio",
            MediaType::Document => "document",
            MediaType::History => "md-msg-hist",
            MediaType::AppState => "md-app-state",
            MediaType::LinkThumbnail => "thumbnail-link",
        }
    }

    /// Whether `segment` is the upload path segment of some type.
    pub fn is_mms_type(segment: &str) -> bool {
        Self::ALL.iter().any(|t| t.mms_type() == segment)
    }

    /// The `mediatype` attribute of a message's `<enc>` node; `None` for
    /// blobs that never travel as a chat message.
    pub fn enc_mediatype(self) -> Option<&'static str> {
        match self {
            MediaType::Image => Some("image"),
            MediaType::Video => Some("video"),
            MediaType::Audio => Some("audio"),
            MediaType::VoiceNote => Some("ptt"),
            MediaType::Document => Some("document"),
            MediaType::Sticker => Some("sticker"),
            MediaType::History | MediaType::AppState | MediaType::LinkThumbnail => None,
        }
    }
}

/// The 32 random bytes a sender picks per media file; every other key comes
/// from it. Wiped on drop, never shown by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct MediaKey([u8; MEDIA_KEY_LEN]);

impl MediaKey {
    /// A fresh key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut key = [0u8; MEDIA_KEY_LEN];
        rng.fill_bytes(&mut key);
        Self(key)
    }

    pub fn from_bytes(bytes: [u8; MEDIA_KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; MEDIA_KEY_LEN] {
        &self.0
    }

    /// The keys for a file of type `ty`.
    pub fn keys(&self, ty: MediaType) -> MediaKeys {
        MediaKeys::derive(&self.0, ty)
    }
}

/// A media key taken from a message must be exactly 32 bytes.
impl TryFrom<&[u8]> for MediaKey {
    type Error = MediaError;
    fn try_from(bytes: &[u8]) -> Result<Self, MediaError> {
        let key: [u8; MEDIA_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| MediaError::BadMediaKey(bytes.len()))?;
        Ok(Self(key))
    }
}

impl fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaKey(..)")
    }
}

/// The keys of one file: IV, cipher key, MAC key and ref key (HKDF-SHA256 of
/// the media key, no salt, the type's info, 112 bytes in that order). Wiped
/// on drop, never shown by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MediaKeys {
    iv: [u8; 16],
    cipher_key: [u8; 32],
    mac_key: [u8; 32],
    ref_key: [u8; 32],
}

impl MediaKeys {
    pub fn derive(media_key: &[u8; MEDIA_KEY_LEN], ty: MediaType) -> Self {
        let mut okm = Zeroizing::new([0u8; 112]);
        hkdf_sha256(media_key, &[], ty.hkdf_info().as_bytes(), okm.as_mut());
        let mut keys = Self {
            iv: [0; 16],
            cipher_key: [0; 32],
            mac_key: [0; 32],
            ref_key: [0; 32],
        };
        keys.iv.copy_from_slice(&okm[..16]);
        keys.cipher_key.copy_from_slice(&okm[16..48]);
        keys.mac_key.copy_from_slice(&okm[48..80]);
        keys.ref_key.copy_from_slice(&okm[80..112]);
        keys
    }

    pub fn iv(&self) -> &[u8; 16] {
        &self.iv
    }

    pub fn cipher_key(&self) -> &[u8; 32] {
        &self.cipher_key
    }

    pub fn mac_key(&self) -> &[u8; 32] {
        &self.mac_key
    }

    /// Not used by encryption; WhatsApp derives it for media references.
    pub fn ref_key(&self) -> &[u8; 32] {
        &self.ref_key
    }
}

impl fmt::Debug for MediaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaKeys(..)")
    }
}

#[cfg(test)]
mod tests;
