//! Request bodies: JSON objects read field by field so that every error
//! names the field, the recipient and session-id rules, and the media forms
//! (multipart, URL, base64) of the send-media endpoints.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use base64::Engine;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A JSON object body. An empty body reads as `{}` (the Node gateways parse
/// a missing body that way), so a missing field is reported by name.
pub(crate) struct JsonBody(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(e.body_text())
            } else {
                ApiError::Body(e.to_string())
            }
        })?;
        JsonBody::parse(&bytes)
    }
}

impl JsonBody {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Map::new()));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(JsonBody(map)),
            Ok(_) => Err(ApiError::Body("the body must be a JSON object".into())),
            Err(e) => Err(ApiError::Body(format!("not valid JSON: {e}"))),
        }
    }

    /// A required, non-empty string.
    pub(crate) fn string(&self, field: &str) -> Result<String, ApiError> {
        self.opt_string(field)?
            .ok_or_else(|| ApiError::field(field, "required field is missing"))
    }

    /// A string that may be absent or null; empty counts as absent.
    pub(crate) fn opt_string(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ApiError::field(
                field,
                format!("must be a string, not {}", kind(other)),
            )),
        }
    }

    /// A required phone number or JID; JSON numbers are accepted too, as the
    /// Node gateways stringify them.
    pub(crate) fn recipient(&self, field: &str) -> Result<String, ApiError> {
        let raw = match self.0.get(field) {
            Some(Value::Number(n)) if n.is_u64() => n.to_string(),
            _ => self.string(field)?,
        };
        recipient(field, &raw)
    }

    /// An optional list of strings.
    pub(crate) fn opt_strings(&self, field: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ApiError::field(
                        field,
                        format!("must be a list of strings, found {}", kind(other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(ApiError::field(
                field,
                format!("must be a list of strings, not {}", kind(other)),
            )),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Session ids as the gateway accepts them: 1-64 of `[A-Za-z0-9_-]`.
pub(crate) fn session_id(field: &str, raw: &str) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::field(
            field,
            format!("{raw:?} is not a session id (1-64 characters of A-Z, a-z, 0-9, '_', '-')"),
        ))
    }
}

/// A recipient: a phone number (digits, optional `+`, spaces and dashes
/// ignored), a JID (`...@s.whatsapp.net`, `...@c.us`, `...@g.us`) or a bare
/// group id (`120363…`, or the older `creator-timestamp`), as the Node
/// gateways take a group in their `to` / `number` fields. Returns what the
/// gateway's `Send.to` takes.
pub(crate) fn recipient(field: &str, raw: &str) -> Result<String, ApiError> {
    let raw = raw.trim();
    if is_bare_group_id(raw) {
        return Ok(format!("{raw}@g.us"));
    }
    if let Some((user, server)) = raw.split_once('@') {
        let server = match server {
            // whatsapp-web.js spells user JIDs `@c.us`.
            "c.us" => "s.whatsapp.net",
            "s.whatsapp.net" | "g.us" | "lid" => server,
            _ => {
                return Err(ApiError::field(
                    field,
                    format!("{raw:?} is not a WhatsApp JID"),
                ))
            }
        };
        if user.is_empty() {
            return Err(ApiError::field(field, format!("{raw:?} has no user part")));
        }
        return Ok(format!("{user}@{server}"));
    }
    let digits: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits = digits.strip_prefix('+').unwrap_or(&digits);
    if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::field(
            field,
            format!("{raw:?} is not a phone number (country code and number, 7-15 digits)"),
        ));
    }
    Ok(format!("+{digits}"))
}

/// Whether `raw` is a group id without its `@g.us`. A phone number has at
/// most 15 digits, so more digits than that cannot be one: `120363` and 12
/// more digits (groups made since 2021), or `creator-timestamp` (older
/// groups: the creator's number, a dash, the creation time in seconds).
fn is_bare_group_id(raw: &str) -> bool {
    let digits = |part: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
    };
    match raw.split_once('-') {
        None => digits(raw, 16..=24),
        Some((creator, created)) => digits(creator, 7..=15) && digits(created, 9..=10),
    }
}

/// An `http://` or `https://` URL for a webhook (https is delivered over
/// TLS, verified against the webpki roots and `--webhook-ca-file`).
pub(crate) fn webhook_url(field: &str, raw: &str) -> Result<String, ApiError> {
    let raw = raw.trim();
    let Some(rest) = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
    else {
        return Err(ApiError::field(field, "must be an http:// or https:// URL"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || raw.parse::<axum::http::Uri>().is_err() {
        return Err(ApiError::field(
            field,
            format!("{raw:?} is not a valid URL"),
        ));
    }
    Ok(raw.to_owned())
}

/// The media of a send-media request, in any of its documented forms.
#[derive(Debug)]
pub(crate) enum Media {
    /// A multipart file part, with its name and declared type.
    File {
        name: String,
        mimetype: Option<String>,
        bytes: Bytes,
    },
    Url(String),
    /// Decoded `mediaBase64`, with the type of its data URL if it was one.
    Base64 {
        mimetype: Option<String>,
        bytes: Bytes,
    },
}

/// A send-media request: `sessionId`, `number`, `caption` and one of
/// `media` (file), `mediaUrl` or `mediaBase64`, as multipart or JSON;
/// optional `mimetype` and `filename` name what the bytes do not.
#[derive(Debug)]
pub(crate) struct MediaForm {
    pub(crate) session_id: String,
    pub(crate) to: String,
    pub(crate) caption: Option<String>,
    pub(crate) mimetype: Option<String>,
    pub(crate) file_name: Option<String>,
    pub(crate) media: Media,
}

/// Body bytes a send-media request may have for files of `max` bytes:
/// base64 in JSON takes 4/3 of the file, plus the other fields.
fn body_limit(max: u64) -> usize {
    let limit = max.saturating_mul(4) / 3 + 64 * 1024;
    usize::try_from(limit).unwrap_or(usize::MAX)
}

fn read_error(field: &str, status: axum::http::StatusCode, text: String) -> ApiError {
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(text)
    } else {
        ApiError::field(field, text)
    }
}

impl FromRequest<crate::routes::App> for MediaForm {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &crate::routes::App) -> Result<Self, Self::Rejection> {
        let max = app.config.max_media_bytes;
        // The route has no default body limit: this one follows the
        // configured media size, and reading past it fails with 413.
        let req =
            req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, body_limit(max))));
        let multipart = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        let mut fields = Map::new();
        let mut file = None;
        if multipart {
            let mut form = Multipart::from_request(req, app)
                .await
                .map_err(|e| ApiError::Body(e.body_text()))?;
            while let Some(field) = form
                .next_field()
                .await
                .map_err(|e| read_error("media", e.status(), e.body_text()))?
            {
                let name = field.name().unwrap_or_default().to_owned();
                if name == "media" && field.file_name().is_some() {
                    let file_name = field.file_name().unwrap_or_default().to_owned();
                    let mimetype = field.content_type().map(str::to_owned);
                    let bytes = field
                        .bytes()
                        .await
                        .map_err(|e| read_error("media", e.status(), e.body_text()))?;
                    file = Some(Media::File {
                        name: file_name,
                        mimetype,
                        bytes,
                    });
                } else {
                    let text = field
                        .text()
                        .await
                        .map_err(|e| read_error(&name, e.status(), e.body_text()))?;
                    fields.insert(name, Value::String(text));
                }
            }
        } else {
            fields = JsonBody::from_request(req, app).await?.0;
        }
        let body = JsonBody(fields);
        let session_id = session_id("sessionId", &body.string("sessionId")?)?;
        let to = body.recipient("number")?;
        let caption = body.opt_string("caption")?;
        let mimetype = body.opt_string("mimetype")?;
        let file_name = body.opt_string("filename")?;
        let url = body.opt_string("mediaUrl")?;
        let b64 = body.opt_string("mediaBase64")?;
        let given =
            usize::from(file.is_some()) + usize::from(url.is_some()) + usize::from(b64.is_some());
        if given != 1 {
            return Err(ApiError::field(
                "media",
                "give exactly one of media (a file), mediaUrl or mediaBase64",
            ));
        }
        let media = match (file, url, b64) {
            (Some(file), _, _) => file,
            (_, Some(url), _) => {
                let ok = (url.starts_with("http://") || url.starts_with("https://"))
                    && url.parse::<axum::http::Uri>().is_ok();
                if !ok {
                    return Err(ApiError::field("mediaUrl", "must be an http(s) URL"));
                }
                Media::Url(url)
            }
            (_, _, Some(b64)) => {
                // Either bare base64 or a `data:<mime>;base64,` URL.
                let (declared, data) = match b64.split_once(";base64,") {
                    Some((head, data)) => (
                        head.strip_prefix("data:")
                            .filter(|m| !m.is_empty())
                            .map(str::to_owned),
                        data,
                    ),
                    None => (None, b64.as_str()),
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| ApiError::field("mediaBase64", format!("not base64: {e}")))?;
                Media::Base64 {
                    mimetype: declared,
                    bytes: Bytes::from(bytes),
                }
            }
            (None, None, None) => {
                return Err(ApiError::field("media", "required field is missing"))
            }
        };
        let size = match &media {
            Media::File { bytes, .. } | Media::Base64 { bytes, .. } => bytes.len() as u64,
            Media::Url(_) => 0,
        };
        if size > max {
            return Err(ApiError::TooLarge(format!(
                "the file has {size} bytes, more than the limit of {max}"
            )));
        }
        if size == 0 && !matches!(media, Media::Url(_)) {
            return Err(ApiError::field("media", "the file is empty"));
        }
        Ok(MediaForm {
            session_id,
            to,
            caption,
            mimetype,
            file_name,
            media,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_in_errors() {
        let body = JsonBody::parse(br#"{"sessionId": 5, "to": "", "list": [1]}"#).expect("json");
        let e = body.string("sessionId").expect_err("number");
        assert_eq!(e.to_string(), "sessionId: must be a string, not a number");
        let e = body.string("to").expect_err("empty");
        assert_eq!(e.to_string(), "to: required field is missing");
        let e = body.string("message").expect_err("absent");
        assert_eq!(e.to_string(), "message: required field is missing");
        assert!(body.opt_strings("list").is_err());
        assert!(JsonBody::parse(b"")
            .expect("empty")
            .opt_string("x")
            .expect("ok")
            .is_none());
        assert!(matches!(JsonBody::parse(b"{bad"), Err(ApiError::Body(_))));
        assert!(matches!(JsonBody::parse(b"[1]"), Err(ApiError::Body(_))));
    }

    #[test]
    fn recipients() {
        assert_eq!(
            recipient("to", "+52 19876543210").expect("ok"),
            "+5219876543210"
        );
        assert_eq!(
            recipient("to", "5491123456789").expect("ok"),
            "+5491123456789"
        );
        assert_eq!(
            recipient("to", "5491123456789@c.us").expect("ok"),
            "5491123456789@s.whatsapp.net"
        );
        assert_eq!(recipient("to", "1-2@g.us").expect("ok"), "1-2@g.us");
        assert_eq!(
            recipient("to", "120363025246125486").expect("ok"),
            "120363025246125486@g.us"
        );
        assert_eq!(
            recipient("chatId", "5491123456789-1612345678").expect("ok"),
            "5491123456789-1612345678@g.us"
        );
        // Formatted phone numbers stay phone numbers.
        assert_eq!(
            recipient("to", "549-1123456789").expect("ok"),
            "+5491123456789"
        );
        assert_eq!(
            recipient("to", "1-555-123-4567").expect("ok"),
            "+15551234567"
        );
        let body = JsonBody::parse(br#"{"number": 120363025246125486}"#).expect("json");
        assert_eq!(
            body.recipient("number").expect("ok"),
            "120363025246125486@g.us"
        );
        for bad in [
            "abc",
            "+12",
            "x@example.com",
            "@c.us",
            "1234567890123456789012345",
            "+120363025246125486",
        ] {
            let e = recipient("number", bad).expect_err(bad);
            assert!(e.to_string().starts_with("number: "), "{e}");
        }
        let body = JsonBody::parse(br#"{"number": 5491123456789}"#).expect("json");
        assert_eq!(body.recipient("number").expect("ok"), "+5491123456789");
    }

    #[test]
    fn session_ids_and_urls() {
        assert!(session_id("sessionId", "user-ABC_123").is_ok());
        assert!(session_id("sessionId", "a b").is_err());
        assert!(session_id("sessionId", &"x".repeat(65)).is_err());
        assert!(webhook_url("webhookUrl", "http://127.0.0.1:9/hook").is_ok());
        assert!(webhook_url("webhookUrl", "https://x.example/hook").is_ok());
        assert!(webhook_url("webhookUrl", "https://").is_err());
        assert!(webhook_url("webhookUrl", "ftp://x").is_err());
        assert!(webhook_url("webhookUrl", "http://").is_err());
    }
}
