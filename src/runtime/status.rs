//! What a session reports: its lifecycle state, the QR it shows, and the
//! status the actor publishes on every change.

use std::borrow::Cow;

use crate::proto::gateway::SessionState as ApiState;
use crate::store::{SessionId, SessionRecord};

/// Lifecycle state, as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Disconnected,
    Connecting,
    QrReady,
    Connected,
    LoggedOut,
}

impl SessionState {
    /// Index into [`crate::metrics::STATES`].
    pub fn metric_index(self) -> usize {
        match self {
            SessionState::Disconnected => 0,
            SessionState::Connecting => 1,
            SessionState::QrReady => 2,
            SessionState::Connected => 3,
            SessionState::LoggedOut => 4,
        }
    }

    pub fn to_api(self) -> ApiState {
        match self {
            SessionState::Disconnected => ApiState::Disconnected,
            SessionState::Connecting => ApiState::Connecting,
            SessionState::QrReady => ApiState::QrReady,
            SessionState::Connected => ApiState::Connected,
            SessionState::LoggedOut => ApiState::LoggedOut,
        }
    }
}

/// The QR code currently shown.
#[derive(Clone, PartialEq, Eq)]
pub struct QrInfo {
    pub code: String,
    pub expires_at_ms: u64,
}

// Hand-written: the code carries the ADV secret and never reaches a log.
impl std::fmt::Debug for QrInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrInfo")
            .field("code", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// The link code currently shown, to type on the phone.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCodeInfo {
    /// `ABCD-EFGH`.
    pub code: String,
    pub expires_at_ms: u64,
}

// Hand-written: whoever holds the code can link a phone to the session.
impl std::fmt::Debug for LinkCodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkCodeInfo")
            .field("code", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// How a session that is not paired yet pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PairingMethod {
    #[default]
    Qr,
    LinkCode,
}

impl PairingMethod {
    /// What the phone is given: "QR code" or "link code".
    pub fn noun(self) -> &'static str {
        match self {
            PairingMethod::Qr => "QR code",
            PairingMethod::LinkCode => "link code",
        }
    }

    /// The event type that carries it.
    pub fn event_type(self) -> &'static str {
        match self {
            PairingMethod::Qr => "QR",
            PairingMethod::LinkCode => "LINK_CODE",
        }
    }
}

/// Everything `Status` reports; published by the actor on every change.
#[derive(Clone, Debug)]
pub struct SessionStatus {
    pub id: SessionId,
    pub state: SessionState,
    pub jid: Option<String>,
    pub phone: Option<String>,
    /// The account's LID (`…@lid`), as the server named it at the last login.
    pub lid: Option<String>,
    pub push_name: Option<String>,
    pub platform: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at_ms: i64,
    pub last_connected_at_ms: Option<i64>,
    pub reconnect_attempts: u32,
    /// Borrowed when fixed (see [`CloseReason::text`](crate::wa::conn::CloseReason::text)).
    pub last_disconnect_reason: Option<Cow<'static, str>>,
    pub qr: Option<QrInfo>,
    /// The pairing method asked for by the last Init.
    pub pairing: PairingMethod,
    pub link_code: Option<LinkCodeInfo>,
}

impl SessionStatus {
    pub(crate) fn from_record(record: &SessionRecord) -> Self {
        Self {
            id: record.id.clone(),
            state: if record.logged_out {
                SessionState::LoggedOut
            } else {
                SessionState::Disconnected
            },
            jid: record.jid.clone(),
            phone: record.jid.as_deref().and_then(phone_of),
            lid: None,
            push_name: record.push_name.clone(),
            platform: record.platform.clone(),
            metadata: record.metadata.clone(),
            created_at_ms: record.created_at_ms,
            last_connected_at_ms: record.last_connected_at_ms,
            reconnect_attempts: 0,
            last_disconnect_reason: None,
            qr: None,
            pairing: PairingMethod::Qr,
            link_code: None,
        }
    }
}

/// The phone number of a user JID, if it has one.
pub(super) fn phone_of(jid: &str) -> Option<String> {
    crate::wa::message::phone_of(&jid.parse().ok()?)
}
