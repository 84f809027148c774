//! The one place runtime types become messages of the public API.

use std::borrow::Cow;

use crate::proto::gateway::{
    PairingMethod as ApiPairing, QrCodeResponse, SendResponse, Session, SessionState as ApiState,
};
use crate::runtime::{
    timestamp_ms, LinkCodeInfo, PairingMethod, QrInfo, Sent, SessionState, SessionStatus,
};

pub(crate) fn pairing(method: PairingMethod) -> ApiPairing {
    match method {
        PairingMethod::Qr => ApiPairing::Qr,
        PairingMethod::LinkCode => ApiPairing::LinkCode,
    }
}

pub(crate) fn state(state: SessionState) -> ApiState {
    match state {
        SessionState::Disconnected => ApiState::Disconnected,
        SessionState::Connecting => ApiState::Connecting,
        SessionState::QrReady => ApiState::QrReady,
        SessionState::Connected => ApiState::Connected,
        SessionState::LoggedOut => ApiState::LoggedOut,
    }
}

pub(crate) fn session(status: SessionStatus) -> Session {
    Session {
        session_id: status.id.to_string(),
        state: state(status.state) as i32,
        jid: status.jid.unwrap_or_default(),
        phone: status.phone.unwrap_or_default(),
        lid: status.lid.unwrap_or_default(),
        push_name: status.push_name.unwrap_or_default(),
        platform: status.platform.unwrap_or_default(),
        created_at: Some(timestamp_ms(status.created_at_ms)),
        last_connected_at: status.last_connected_at_ms.map(timestamp_ms),
        reconnect_attempts: status.reconnect_attempts,
        last_disconnect_reason: status
            .last_disconnect_reason
            .map(Cow::into_owned)
            .unwrap_or_default(),
        metadata: status.metadata.into_iter().collect(),
        pairing: pairing(status.pairing) as i32,
        link_code_expires_at: status
            .link_code
            .as_ref()
            .map(|c| timestamp_ms(millis(c.expires_at_ms))),
        link_code: status.link_code.map(|c| c.code).unwrap_or_default(),
    }
}

pub(crate) fn qr_code(qr: QrInfo, png_data_url: String) -> QrCodeResponse {
    QrCodeResponse {
        qr: qr.code,
        png_data_url,
        expires_at: Some(timestamp_ms(millis(qr.expires_at_ms))),
        pairing: ApiPairing::Qr as i32,
        link_code: String::new(),
    }
}

pub(crate) fn link_code(code: LinkCodeInfo) -> QrCodeResponse {
    QrCodeResponse {
        qr: String::new(),
        png_data_url: String::new(),
        expires_at: Some(timestamp_ms(millis(code.expires_at_ms))),
        pairing: ApiPairing::LinkCode as i32,
        link_code: code.code,
    }
}

pub(crate) fn sent(sent: Sent) -> SendResponse {
    SendResponse {
        message_id: sent.message_id,
        timestamp: Some(timestamp_ms(seconds_to_millis(sent.timestamp_s))),
        recipient_phone: sent.recipient_phone.unwrap_or_default(),
        recipient_lid: sent
            .recipient_lid
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// Unsigned milliseconds as the signed ones timestamps take, saturating.
fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Server seconds (whatever the server sent) as milliseconds, saturating
/// instead of overflowing.
fn seconds_to_millis(seconds: u64) -> i64 {
    millis(seconds.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_seconds_never_overflow() {
        assert_eq!(seconds_to_millis(1_700_000_000), 1_700_000_000_000);
        assert_eq!(seconds_to_millis(u64::MAX), i64::MAX);
        assert_eq!(seconds_to_millis(i64::MAX as u64 / 1000 + 1), i64::MAX);
        let response = sent(Sent {
            message_id: "m".into(),
            timestamp_s: u64::MAX,
            recipient_phone: None,
            recipient_lid: None,
        });
        assert!(response.timestamp.expect("timestamp").seconds > 0);
    }
}
