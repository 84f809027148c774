//! The media part of a WhatsApp `Message`: one flat description of an
//! image, video, audio file, voice note, document or sticker, to build the
//! protobuf a sender puts in a message and to read what a receiver needs to
//! download, decrypt and verify the file.

use super::{Expected, MediaError, MediaKey, MediaType};
use crate::proto::wa::message::{
    AudioMessage, DocumentMessage, ImageMessage, StickerMessage, VideoMessage,
};
use crate::proto::wa::Message;

/// A media message's content, whatever its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaInfo {
    /// One of the message types: image, video, audio, voice note,
    /// document or sticker.
    pub ty: MediaType,
    pub mimetype: String,
    /// Shown under images, videos and documents.
    pub caption: Option<String>,
    /// Documents only.
    pub file_name: Option<String>,
    /// A full download URL, when the sender gave one. Prefer `direct_path`
    /// on a host from `media_conn`: a peer can put any URL here.
    pub url: Option<String>,
    pub direct_path: String,
    pub media_key: MediaKey,
    pub media_key_timestamp: Option<i64>,
    pub file_sha256: [u8; 32],
    pub file_enc_sha256: [u8; 32],
    pub file_length: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Duration of audio and video.
    pub seconds: Option<u32>,
    /// A small JPEG (PNG for stickers) shown before the download.
    pub thumbnail: Option<Vec<u8>>,
}

impl MediaInfo {
    /// What the decryptor must check for this message, with a size limit.
    pub fn expected(&self, max_file_length: Option<u64>) -> Expected {
        Expected {
            file_enc_sha256: Some(self.file_enc_sha256),
            file_sha256: Some(self.file_sha256),
            file_length: Some(self.file_length),
            max_file_length,
        }
    }

    /// The `Message` carrying this media. Types that are not chat messages
    /// (history, app state, link thumbnails) give an empty message.
    pub fn to_message(&self) -> Message {
        let key = Some(self.media_key.as_bytes().to_vec());
        let sha = Some(self.file_sha256.to_vec());
        let enc_sha = Some(self.file_enc_sha256.to_vec());
        let length = Some(self.file_length);
        let path = Some(self.direct_path.clone());
        let mimetype = Some(self.mimetype.clone());
        let mut message = Message::default();
        match self.ty {
            MediaType::Image => {
                message.image_message = Some(ImageMessage {
                    url: self.url.clone(),
                    mimetype,
                    caption: self.caption.clone(),
                    file_sha256: sha,
                    file_length: length,
                    height: self.height,
                    width: self.width,
                    media_key: key,
                    file_enc_sha256: enc_sha,
                    direct_path: path,
                    media_key_timestamp: self.media_key_timestamp,
                    jpeg_thumbnail: self.thumbnail.clone(),
                    view_once: None,
                })
            }
            MediaType::Video => {
                message.video_message = Some(VideoMessage {
                    url: self.url.clone(),
                    mimetype,
                    file_sha256: sha,
                    file_length: length,
                    seconds: self.seconds,
                    media_key: key,
                    caption: self.caption.clone(),
                    gif_playback: None,
                    height: self.height,
                    width: self.width,
                    file_enc_sha256: enc_sha,
                    direct_path: path,
                    media_key_timestamp: self.media_key_timestamp,
                    jpeg_thumbnail: self.thumbnail.clone(),
                    view_once: None,
                })
            }
            MediaType::Audio | MediaType::VoiceNote => {
                message.audio_message = Some(AudioMessage {
                    url: self.url.clone(),
                    mimetype,
                    file_sha256: sha,
                    file_length: length,
                    seconds: self.seconds,
                    ptt: Some(self.ty == MediaType::VoiceNote),
                    media_key: key,
                    file_enc_sha256: enc_sha,
                    direct_path: path,
                    media_key_timestamp: self.media_key_timestamp,
                    waveform: None,
                    view_once: None,
                })
            }
            MediaType::Document => {
                message.document_message = Some(DocumentMessage {
                    url: self.url.clone(),
                    mimetype,
                    title: self.file_name.clone(),
                    file_sha256: sha,
                    file_length: length,
                    page_count: None,
                    media_key: key,
                    file_name: self.file_name.clone(),
                    file_enc_sha256: enc_sha,
                    direct_path: path,
                    media_key_timestamp: self.media_key_timestamp,
                    jpeg_thumbnail: self.thumbnail.clone(),
                    thumbnail_height: None,
                    thumbnail_width: None,
                    caption: self.caption.clone(),
                })
            }
            MediaType::Sticker => {
                message.sticker_message = Some(StickerMessage {
                    url: self.url.clone(),
                    file_sha256: sha,
                    file_enc_sha256: enc_sha,
                    media_key: key,
                    mimetype,
                    height: self.height,
                    width: self.width,
                    direct_path: path,
                    file_length: length,
                    media_key_timestamp: self.media_key_timestamp,
                    is_animated: None,
                    png_thumbnail: self.thumbnail.clone(),
                })
            }
            MediaType::History | MediaType::AppState | MediaType::LinkThumbnail => {}
        }
        message
    }

    /// The type of a message's media, if it has any.
    pub fn type_of(message: &Message) -> Option<MediaType> {
        if message.image_message.is_some() {
            Some(MediaType::Image)
        } else if message.video_message.is_some() {
            Some(MediaType::Video)
        } else if let Some(audio) = &message.audio_message {
            Some(if audio.ptt == Some(true) {
                MediaType::VoiceNote
            } else {
                MediaType::Audio
            })
        } else if message.document_message.is_some() {
            Some(MediaType::Document)
        } else if message.sticker_message.is_some() {
            Some(MediaType::Sticker)
        } else {
            None
        }
    }

    /// The media of a received message: `None` when it has none, an error
    /// when its keys or hashes are malformed (nothing could be verified).
    pub fn from_message(message: &Message) -> Option<Result<Self, MediaError>> {
        // The fields every media message has, plus those only some have.
        macro_rules! raw {
            ($ty:expr, $m:expr, caption: $caption:expr, file_name: $file_name:expr,
             size: ($width:expr, $height:expr), seconds: $seconds:expr, thumbnail: $thumbnail:expr) => {
                Raw {
                    ty: $ty,
                    url: &$m.url,
                    mimetype: &$m.mimetype,
                    caption: $caption,
                    file_name: $file_name,
                    direct_path: &$m.direct_path,
                    media_key: &$m.media_key,
                    media_key_timestamp: $m.media_key_timestamp,
                    file_sha256: &$m.file_sha256,
                    file_enc_sha256: &$m.file_enc_sha256,
                    file_length: $m.file_length,
                    width: $width,
                    height: $height,
                    seconds: $seconds,
                    thumbnail: $thumbnail,
                }
            };
        }
        let raw = if let Some(m) = &message.image_message {
            raw!(MediaType::Image, m, caption: &m.caption, file_name: &None,
                size: (m.width, m.height), seconds: None, thumbnail: &m.jpeg_thumbnail)
        } else if let Some(m) = &message.video_message {
            raw!(MediaType::Video, m, caption: &m.caption, file_name: &None,
                size: (m.width, m.height), seconds: m.seconds, thumbnail: &m.jpeg_thumbnail)
        } else if let Some(m) = &message.audio_message {
            let ty = if m.ptt == Some(true) {
                MediaType::VoiceNote
            } else {
                MediaType::Audio
            };
            raw!(ty, m, caption: &None, file_name: &None,
                size: (None, None), seconds: m.seconds, thumbnail: &None)
        } else if let Some(m) = &message.document_message {
            raw!(MediaType::Document, m, caption: &m.caption, file_name: &m.file_name,
                size: (None, None), seconds: None, thumbnail: &m.jpeg_thumbnail)
        } else if let Some(m) = &message.sticker_message {
            raw!(MediaType::Sticker, m, caption: &None, file_name: &None,
                size: (m.width, m.height), seconds: None, thumbnail: &m.png_thumbnail)
        } else {
            return None;
        };
        Some(raw.read())
    }
}

/// The fields every media message has, borrowed from whichever it is.
struct Raw<'a> {
    ty: MediaType,
    url: &'a Option<String>,
    mimetype: &'a Option<String>,
    caption: &'a Option<String>,
    file_name: &'a Option<String>,
    direct_path: &'a Option<String>,
    media_key: &'a Option<Vec<u8>>,
    media_key_timestamp: Option<i64>,
    file_sha256: &'a Option<Vec<u8>>,
    file_enc_sha256: &'a Option<Vec<u8>>,
    file_length: Option<u64>,
    width: Option<u32>,
    height: Option<u32>,
    seconds: Option<u32>,
    thumbnail: &'a Option<Vec<u8>>,
}

impl Raw<'_> {
    fn read(self) -> Result<MediaInfo, MediaError> {
        let hash = |field: &Option<Vec<u8>>, what: &'static str| -> Result<[u8; 32], MediaError> {
            field
                .as_deref()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or(MediaError::BadField(what))
        };
        let media_key = MediaKey::try_from(self.media_key.as_deref().unwrap_or_default())?;
        let direct_path = self
            .direct_path
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or(MediaError::BadField("direct_path"))?;
        Ok(MediaInfo {
            ty: self.ty,
            mimetype: self.mimetype.clone().unwrap_or_default(),
            caption: self.caption.clone(),
            file_name: self.file_name.clone(),
            url: self.url.clone(),
            direct_path,
            media_key,
            media_key_timestamp: self.media_key_timestamp,
            file_sha256: hash(self.file_sha256, "file_sha256")?,
            file_enc_sha256: hash(self.file_enc_sha256, "file_enc_sha256")?,
            file_length: self
                .file_length
                .ok_or(MediaError::BadField("file_length"))?,
            width: self.width,
            height: self.height,
            seconds: self.seconds,
            thumbnail: self.thumbnail.clone(),
        })
    }
}
