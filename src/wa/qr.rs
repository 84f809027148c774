//! The pairing QR code's text: the server's ref plus the companion's noise
//! key, identity key and ADV secret. Pure parsing and formatting; must not
//! import tokio, the store, the clock or `sim`.
//!
//! Two forms are in use: the legacy `ref,noise,identity,adv` (Baileys 6) and
//! the current `https://wa.me/settings/linked_devices#ref,noise,identity,adv,platform`
//! (WhatsApp Web, whatsmeow). Keys are standard base64 with padding.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Prefix of the current QR form.
pub const QR_URL_PREFIX: &str = "https://wa.me/settings/linked_devices#";

/// Longest QR text accepted; real codes are under 300 characters.
const MAX_QR_LEN: usize = 2048;

/// Why a QR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error("QR code is empty")]
    Empty,
    #[error("QR code is longer than {MAX_QR_LEN} characters")]
    TooLong,
    #[error("QR code has {0} comma-separated parts; expected ref,noise,identity,adv[,platform]")]
    PartCount(usize),
    #[error("QR code ref is empty")]
    EmptyRef,
    #[error("QR code {field} is not standard base64")]
    Base64 { field: &'static str },
    #[error("QR code {field} is {len} bytes; expected 32")]
    KeyLength { field: &'static str, len: usize },
    #[error("QR code platform is empty")]
    EmptyPlatform,
}

/// The contents of a pairing QR code.
#[derive(Clone, PartialEq, Eq)]
pub struct QrData {
    /// The ref the server issued in `<pair-device>`, as text.
    pub reference: String,
    /// The companion's Noise static public key.
    pub noise_public: [u8; 32],
    /// The companion's Signal identity public key.
    pub identity_public: [u8; 32],
    /// Secret the phone keys the pair-success HMAC with.
    pub adv_secret: [u8; 32],
    /// Companion client type of the URL form (`1` Chrome … `9` other web).
    pub platform: Option<String>,
}

impl QrData {
    /// Parses either QR form. Surrounding whitespace is ignored; a fifth part
    /// (the platform) is accepted in both forms.
    pub fn parse(s: &str) -> Result<Self, QrError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(QrError::Empty);
        }
        if s.len() > MAX_QR_LEN {
            return Err(QrError::TooLong);
        }
        let body = s.strip_prefix(QR_URL_PREFIX).unwrap_or(s);
        let parts: Vec<&str> = body.split(',').collect();
        let (reference, noise, identity, adv, platform) = match parts.as_slice() {
            [r, n, i, a] => (*r, *n, *i, *a, None),
            [r, n, i, a, p] => (*r, *n, *i, *a, Some(*p)),
            other => return Err(QrError::PartCount(other.len())),
        };
        if reference.is_empty() {
            return Err(QrError::EmptyRef);
        }
        let platform = match platform {
            Some("") => return Err(QrError::EmptyPlatform),
            Some(p) => Some(p.to_owned()),
            None => None,
        };
        Ok(Self {
            reference: reference.to_owned(),
            noise_public: key32("noise key", noise)?,
            identity_public: key32("identity key", identity)?,
            adv_secret: key32("adv secret", adv)?,
            platform,
        })
    }

    /// The current form, as WhatsApp Web shows it.
    pub fn to_url(&self, platform: &str) -> String {
        format!("{QR_URL_PREFIX}{},{platform}", self.to_legacy())
    }

    /// The four-part legacy form.
    pub fn to_legacy(&self) -> String {
        format!(
            "{},{},{},{}",
            self.reference,
            STANDARD.encode(self.noise_public),
            STANDARD.encode(self.identity_public),
            STANDARD.encode(self.adv_secret)
        )
    }
}

// The ADV secret must never reach logs.
impl fmt::Debug for QrData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QrData")
            .field("reference", &self.reference)
            .field("noise_public", &hex::encode(self.noise_public))
            .field("identity_public", &hex::encode(self.identity_public))
            .field("adv_secret", &"<redacted>")
            .field("platform", &self.platform)
            .finish()
    }
}

fn key32(field: &'static str, text: &str) -> Result<[u8; 32], QrError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| QrError::Base64 { field })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| QrError::KeyLength {
        field,
        len: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QrData {
        QrData {
            reference: "2@Wq1+x/ZpQ==".to_owned(),
            noise_public: [1; 32],
            identity_public: [2; 32],
            adv_secret: [3; 32],
            platform: None,
        }
    }

    const B1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const B2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    const B3: &str = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

    #[test]
    fn parses_legacy_form() {
        let text = format!("2@Wq1+x/ZpQ==,{B1},{B2},{B3}");
        let qr = QrData::parse(&text).expect("legacy form parses");
        assert_eq!(qr, sample());
        assert_eq!(qr.to_legacy(), text);
    }

    #[test]
    fn parses_url_form() {
        let text = format!("https://wa.me/settings/linked_devices#2@Wq1+x/ZpQ==,{B1},{B2},{B3},9");
        let qr = QrData::parse(&text).expect("url form parses");
        assert_eq!(qr.platform.as_deref(), Some("9"));
        assert_eq!(qr.noise_public, [1; 32]);
        assert_eq!(qr.to_url("9"), text);
    }

    #[test]
    fn round_trips_and_trims() {
        let qr = sample();
        let parsed = QrData::parse(&format!("  {}\n", qr.to_legacy())).expect("parses");
        assert_eq!(parsed, qr);
        let parsed = QrData::parse(&qr.to_url("c")).expect("parses");
        assert_eq!(parsed.platform.as_deref(), Some("c"));
        assert_eq!(parsed.adv_secret, qr.adv_secret);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(QrData::parse("  "), Err(QrError::Empty));
        assert_eq!(QrData::parse("a,b,c"), Err(QrError::PartCount(3)));
        assert_eq!(
            QrData::parse(&format!("r,{B1},{B2},{B3},9,x")),
            Err(QrError::PartCount(6))
        );
        assert_eq!(
            QrData::parse(&format!(",{B1},{B2},{B3}")),
            Err(QrError::EmptyRef)
        );
        assert_eq!(
            QrData::parse(&format!("r,{B1},not base64!,{B3}")),
            Err(QrError::Base64 {
                field: "identity key"
            })
        );
        assert_eq!(
            QrData::parse(&format!("r,{B1},{B2},AAAA")),
            Err(QrError::KeyLength {
                field: "adv secret",
                len: 3
            })
        );
        assert_eq!(
            QrData::parse(&format!("{QR_URL_PREFIX}r,{B1},{B2},{B3},")),
            Err(QrError::EmptyPlatform)
        );
        assert_eq!(QrData::parse(&"x".repeat(3000)), Err(QrError::TooLong));
        // Unpadded base64 is not what clients show.
        let unpadded = B1.trim_end_matches('=');
        assert!(matches!(
            QrData::parse(&format!("r,{unpadded},{B2},{B3}")),
            Err(QrError::Base64 { field: "noise key" })
        ));
    }

    #[test]
    fn debug_hides_secret() {
        let shown = format!("{:?}", sample());
        assert!(shown.contains("redacted"));
        assert!(!shown.contains("0303"));
    }
}
