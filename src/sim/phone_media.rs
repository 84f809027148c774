//! Virtual phones and media: a phone sends a file (encrypted under a media
//! key it picks, stored on the media host, announced in a media message),
//! checks the files it receives (fetched from the media host, decrypted,
//! hashes verified), and answers media retry requests for what it sent by
//! uploading it again. Never holds a registry lock across an `.await`.
//! Imports `wa` only.

use std::sync::Arc;

use bytes::Bytes;
use rand::RngCore;
use tracing::debug;

use super::media::SentMedia;
use super::phone::{device_sent_copy, InboxMedia};
use super::registry::Command;
use super::routing::ClientReceipt;
use super::{unix_now, Inner, SimError};
use crate::wa::binary::Node;
use crate::wa::jid::Jid;
use crate::wa::media::{
    body_len, decrypt_retry_receipt, encrypt_retry_notification, parse_retry_receipt,
    retry_error_notification, retry_notification, Decryptor, Encryptor, MediaError, MediaInfo,
    MediaKey, MediaType, RetryResult,
};

/// Read size when a phone checks a downloaded body.
const CHECK_CHUNK: usize = 64 * 1024;
/// `<error code>` of a retry answer for media the phone does not have.
const NOT_ON_PHONE: u32 = 2;

/// A file a virtual phone sends.
#[derive(Clone, Debug)]
pub struct MediaSend {
    /// Image, video, audio, voice note, document or sticker.
    pub kind: MediaType,
    pub data: Vec<u8>,
    pub mimetype: String,
    pub caption: Option<String>,
    /// Documents only.
    pub file_name: Option<String>,
}

impl Inner {
    /// The phone of `from_user` sends a file to the account `to_user`.
    /// Returns the message id and the media description it carried (media
    /// key included, for tests that play the receiving side).
    pub(crate) async fn phone_send_media(
        &self,
        from_user: &str,
        to_user: &str,
        media: MediaSend,
    ) -> Result<(String, MediaInfo), SimError> {
        let Some(mediatype) = media.kind.enc_mediatype() else {
            return Err(SimError::InvalidMedia(format!(
                "{:?} is not sent as a message",
                media.kind
            )));
        };
        let plan = self.phone_plan(from_user, to_user)?;
        let media_key = self.with_rng(MediaKey::generate);
        let mut encryptor = Encryptor::new(&media_key.keys(media.kind));
        let mut body = Vec::with_capacity(
            usize::try_from(body_len(media.data.len() as u64)).unwrap_or_default(),
        );
        encryptor.update(&media.data, &mut body);
        let encrypted = encryptor.finish(&mut body);
        let body = Bytes::from(body);
        let upload = self
            .media
            .put(body.clone())
            .await
            .map_err(|err| SimError::MediaStore(err.to_string()))?;
        let info = MediaInfo {
            ty: media.kind,
            mimetype: media.mimetype,
            caption: media.caption,
            file_name: media.file_name,
            url: upload.url,
            direct_path: upload.direct_path,
            media_key: media_key.clone(),
            media_key_timestamp: i64::try_from(unix_now()).ok(),
            file_sha256: encrypted.file_sha256,
            file_enc_sha256: encrypted.file_enc_sha256,
            file_length: encrypted.file_length,
            width: None,
            height: None,
            seconds: None,
            thumbnail: None,
        };
        let for_peer = info.to_message();
        let for_self = device_sent_copy(&plan.chat.to_string(), for_peer.clone());
        let id = self
            .phone_send_message(&plan, &for_peer, &for_self, Some(mediatype))
            .await?;
        self.media.remember_sent(&id, SentMedia { media_key, body });
        Ok((id, info))
    }

    /// What a phone's inbox shows for a received media message: its
    /// caption as text, and the media with the outcome of its checks.
    pub(super) async fn receive_media(
        &self,
        kind: MediaType,
        info: Result<Box<MediaInfo>, MediaError>,
    ) -> (String, Option<InboxMedia>) {
        let info = match info {
            Ok(info) => info,
            Err(err) => {
                let media = InboxMedia {
                    kind,
                    mimetype: String::new(),
                    caption: None,
                    file_name: None,
                    file_length: 0,
                    verified: Err(err.to_string()),
                };
                return (String::new(), Some(media));
            }
        };
        let verified = self.check_media(&info).await;
        if let Err(err) = &verified {
            debug!(%err, "received media does not check out");
        }
        let media = InboxMedia {
            kind,
            mimetype: info.mimetype.clone(),
            caption: info.caption.clone(),
            file_name: info.file_name.clone(),
            file_length: info.file_length,
            verified,
        };
        (info.caption.clone().unwrap_or_default(), Some(media))
    }

    /// Fetches a received file from the media host and checks it as a
    /// client would: MAC, body hash, plaintext hash and length.
    async fn check_media(&self, info: &MediaInfo) -> Result<(), String> {
        let body = self
            .media
            .fetch(&info.direct_path)
            .await
            .map_err(|err| format!("download: {err}"))?;
        let mut decryptor = Decryptor::new(&info.media_key.keys(info.ty), info.expected(None));
        let mut sink = Vec::with_capacity(CHECK_CHUNK + 32);
        for chunk in body.chunks(CHECK_CHUNK) {
            decryptor
                .update(chunk, &mut sink)
                .map_err(|err| err.to_string())?;
            sink.clear();
        }
        decryptor
            .finish(&mut sink)
            .map(drop)
            .map_err(|err| err.to_string())
    }

    /// A device asks for a file again (`server-error` receipt): the phone
    /// that sent it uploads it anew and the device gets a `mediaretry`
    /// notification with the new direct path, encrypted under the file's
    /// media key; without the file, a notification with `<error code=2>`.
    pub(super) async fn answer_media_retry(&self, sender: &Jid, receipt: &ClientReceipt) {
        let node = Node::new("receipt")
            .attr("id", receipt.id.as_str())
            .attr("to", &receipt.to)
            .attr("type", "server-error")
            .children(receipt.children.clone());
        let request = match parse_retry_receipt(&node) {
            Ok(request) => request,
            Err(err) => {
                debug!(%err, "media retry request ignored");
                return;
            }
        };
        let target = &request.target;
        let from = sender.to_non_ad();
        let t = unix_now();
        let answer = match self.media.sent(&target.message_id) {
            None => retry_error_notification(target, &from, t, NOT_ON_PHONE),
            Some(sent) => {
                let result = match decrypt_retry_receipt(&request, &sent.media_key) {
                    Err(err) => {
                        debug!(%err, "media retry request does not decrypt");
                        RetryResult::DecryptionError
                    }
                    Ok(()) => match self.media.put(sent.body.clone()).await {
                        Ok(upload) => RetryResult::Success {
                            direct_path: upload.direct_path,
                        },
                        Err(err) => {
                            debug!(%err, "media not uploaded again");
                            RetryResult::GeneralError
                        }
                    },
                };
                let iv = self.with_rng(|rng| {
                    let mut iv = [0u8; 12];
                    rng.fill_bytes(&mut iv);
                    iv
                });
                let sealed =
                    encrypt_retry_notification(&sent.media_key, &target.message_id, &result, &iv);
                retry_notification(target, &from, t, sealed, &iv)
            }
        };
        // Notifications are not queued here: a device that went offline
        // meanwhile asks again.
        let answer = Arc::new(answer);
        for conn in self.registry.connections_of(sender) {
            let _ = conn.send(Command::Deliver(Arc::clone(&answer))).await;
        }
    }
}
