//! Errors of registry operations. Each variant says what the caller can do
//! about it; `api::errors` is the one place they become gRPC statuses.

use crate::store::{SessionId, StoreError};

use super::media::MediaFailure;
use super::messaging::SendError;
use super::status::{PairingMethod, SessionState};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("session {0} not found")]
    NotFound(SessionId),
    #[error("session limit reached ({0} sessions online); disconnect one or raise --max-sessions")]
    SessionLimit(usize),
    #[error("session {0} is already connected; no QR code is needed")]
    AlreadyConnected(SessionId),
    #[error(
        "session {id} has no {} now (state {state:?}); call Init and wait for a {} event",
        pairing.noun(),
        pairing.event_type()
    )]
    NoQrYet {
        id: SessionId,
        state: SessionState,
        pairing: PairingMethod,
    },
    /// Never paired, or waiting for its QR code to be scanned: it will not
    /// connect until someone pairs it.
    #[error("session {0} is not connected: it is not paired yet; call Init and scan its QR code")]
    NotPaired(SessionId),
    /// Stopped (by Disconnect, replaced by another connection, or out of
    /// reconnect attempts): it stays offline until Init.
    #[error("session {id} is not connected: it stopped ({reason}); call Init to connect it again")]
    Stopped { id: SessionId, reason: String },
    /// The device was unlinked: it needs a new pairing.
    #[error("session {0} is not connected: it is logged out; call Init and pair it again")]
    LoggedOut(SessionId),
    /// Connecting or reconnecting by itself: the same call succeeds shortly.
    #[error("session {0} is not connected right now: it is reconnecting; retry shortly")]
    Reconnecting(SessionId),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// Gateways share the store and another one serves the session.
    #[error("session {id} is served by the gateway at {address}; call that one")]
    OwnedElsewhere { id: SessionId, address: String },
    /// Its lease is still held by an earlier run of this gateway (killed, then restarted at
    /// the same address): the session is taken over once that lease lapses.
    #[error("session {0} is moving to a gateway after a restart; retry shortly")]
    Moving(SessionId),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Send(#[from] SendError),
    /// A query the server did not answer in time; it may be repeated.
    #[error("the server did not answer in time; retry")]
    QueryTimeout,
    #[error("{0}")]
    Media(#[from] MediaFailure),
}
