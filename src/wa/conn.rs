//! One connection to the chat server as a sans-IO state machine: the Noise
//! handshake, registration (pairing by QR code or by link code) or login,
//! keepalive, and the classification of every way a connection ends.
//!
//! Inputs are `handle_data(bytes, now)` and `handle_timeout(now)`; outputs are
//! `poll_transmit()` (websocket messages to send), `poll_event()` and
//! `poll_timeout()`. Callers must drain every event before sending the
//! transmits queued with it: an event such as [`Event::CredentialsChanged`]
//! must be persisted before the reply that follows it reaches the server.
//! Must not import tokio, the store or the clock.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::wa::binary::{self, Node};
use crate::wa::creds::Credentials;
use crate::wa::jid::{Jid, PhoneNumber};
use crate::wa::link_code::{
    self, AwaitingPhone, CompanionPlatform, LinkCodeError, LinkCodeRequest,
};
use crate::wa::message::stanza_ack;
use crate::wa::noise::{self, ClientHandshake, FrameDecoder, Transport};
use crate::wa::pairing::{self, PairError};
use crate::wa::payload::{self, DeviceInfo};
use crate::wa::qr::QrData;

/// Timers of a connection, in milliseconds.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// From the first byte until `success` or `pair-device`.
    pub handshake_ms: u64,
    /// Keepalive pings are sent at a random interval in this range.
    pub keepalive_min_ms: u64,
    pub keepalive_max_ms: u64,
    /// A ping unanswered (and nothing else received) for this long ends the connection.
    pub keepalive_deadline_ms: u64,
    /// Lifetime of the first QR code, then of each following one.
    pub qr_first_ms: u64,
    pub qr_next_ms: u64,
    /// How long a logout waits for the server's answer.
    pub logout_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake_ms: 20_000,
            keepalive_min_ms: 20_000,
            keepalive_max_ms: 30_000,
            keepalive_deadline_ms: 20_000,
            qr_first_ms: 60_000,
            qr_next_ms: 20_000,
            logout_ms: 10_000,
        }
    }
}

/// Static configuration of a client connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Root key the server certificate chain must be signed with.
    pub root_key: [u8; 32],
    pub device: DeviceInfo,
    /// Companion platform id appended to QR codes and sent with link-code
    /// requests (`1` = Chrome).
    pub qr_platform: String,
    /// `Browser (OS)` sent with link-code requests; the server accepts only
    /// common browsers and systems.
    pub link_code_display: String,
    /// Edge routing info learned from the server, sent before the intro.
    pub routing_info: Option<Vec<u8>>,
    pub timeouts: Timeouts,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            root_key: noise::WA_ROOT_PUBLIC_KEY,
            device: DeviceInfo::default(),
            qr_platform: "1".to_owned(),
            link_code_display: "Chrome (Linux)".to_owned(),
            routing_info: None,
            timeouts: Timeouts::default(),
        }
    }
}

/// What the server's answer or silence means for the next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Connect again at once (e.g. after pairing, 515).
    ReconnectNow,
    /// Connect again after a backoff.
    Reconnect,
    /// Do not reconnect; the reason needs a person (or a new Init).
    Stop,
    /// The device is no longer linked: erase its keys.
    LoggedOut,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// `stream:error code=515`: reconnect now (normal after pairing).
    RestartRequired,
    /// The device was unlinked or the account is gone (detail says how).
    LoggedOut(String),
    /// Another connection for this device took over.
    Replaced,
    /// Any other stream error; the server expects us back.
    StreamError(String),
    /// `<failure reason=N>` at login that is not a logout.
    ConnectFailure(u32),
    /// Every QR code expired without a scan.
    QrTimeout,
    /// The link code was not entered on the phone in time.
    LinkCodeTimeout,
    /// The server refused to register a link code (e.g. a phone number it
    /// does not know).
    LinkCodeRefused(String),
    /// A deadline passed: handshake, login, keepalive or logout.
    Timeout(&'static str),
    /// The server's certificate chain did not verify.
    CertificateRejected(String),
    /// The server sent something we cannot process.
    Protocol(String),
    /// The server ended the stream without an error.
    ServerClosed,
    /// The socket closed under us (reported by the I/O layer).
    SocketClosed(String),
    /// The owner could not keep or read what the connection needs (its
    /// store failed, e.g. a full disk). Nothing of the failed step was
    /// acknowledged, so the server delivers it again after a reconnect.
    StoreFailed(String),
    /// The stored credentials cannot be decoded: connecting again cannot
    /// help; someone must quarantine them or log the device out.
    CredentialsUnreadable(String),
    /// We closed the connection.
    ClientClosed,
}

impl CloseReason {
    /// What to do next; every variant is placed explicitly.
    pub fn recovery(&self) -> Recovery {
        match self {
            CloseReason::RestartRequired => Recovery::ReconnectNow,
            CloseReason::LoggedOut(_) => Recovery::LoggedOut,
            CloseReason::Replaced => Recovery::Stop,
            CloseReason::StreamError(_) => Recovery::Reconnect,
            CloseReason::ConnectFailure(code) => match code {
                500 | 503 => Recovery::Reconnect,
                _ => Recovery::Stop,
            },
            CloseReason::QrTimeout => Recovery::Stop,
            CloseReason::LinkCodeTimeout => Recovery::Stop,
            CloseReason::LinkCodeRefused(_) => Recovery::Stop,
            CloseReason::Timeout(_) => Recovery::Reconnect,
            CloseReason::CertificateRejected(_) => Recovery::Stop,
            CloseReason::Protocol(_) => Recovery::Reconnect,
            CloseReason::ServerClosed => Recovery::Reconnect,
            CloseReason::SocketClosed(_) => Recovery::Reconnect,
            CloseReason::StoreFailed(_) => Recovery::Reconnect,
            CloseReason::CredentialsUnreadable(_) => Recovery::Stop,
            CloseReason::ClientClosed => Recovery::Stop,
        }
    }
}

impl CloseReason {
    /// The text of a reason without detail; `None` for one with detail.
    fn fixed_text(&self) -> Option<&'static str> {
        match self {
            CloseReason::RestartRequired => Some("stream error 515 (restart required)"),
            CloseReason::Replaced => Some("replaced by another connection"),
            CloseReason::QrTimeout => Some("QR code not scanned in time"),
            CloseReason::LinkCodeTimeout => Some("link code not entered in time"),
            CloseReason::ServerClosed => Some("server closed the stream"),
            CloseReason::ClientClosed => Some("closed by client"),
            CloseReason::LoggedOut(_)
            | CloseReason::StreamError(_)
            | CloseReason::ConnectFailure(_)
            | CloseReason::LinkCodeRefused(_)
            | CloseReason::Timeout(_)
            | CloseReason::CertificateRejected(_)
            | CloseReason::Protocol(_)
            | CloseReason::SocketClosed(_)
            | CloseReason::StoreFailed(_)
            | CloseReason::CredentialsUnreadable(_) => None,
        }
    }

    /// What [`Display`](std::fmt::Display) writes, borrowed when it is fixed: an offline
    /// session keeps its last reason, and a string allocated when it disconnected would sit
    /// among the connection's freed memory and keep that page from going back to the system.
    pub fn text(&self) -> Cow<'static, str> {
        match self.fixed_text() {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(self.to_string()),
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::LoggedOut(why) => write!(f, "logged out ({why})"),
            CloseReason::StreamError(code) => write!(f, "stream error {code}"),
            CloseReason::ConnectFailure(code) => write!(f, "connect failure {code}"),
            CloseReason::LinkCodeRefused(why) => write!(f, "link code refused: {why}"),
            CloseReason::Timeout(what) => write!(f, "{what} timed out"),
            CloseReason::CertificateRejected(why) => {
                write!(f, "server certificate rejected: {why}")
            }
            CloseReason::Protocol(why) => write!(f, "protocol error: {why}"),
            CloseReason::SocketClosed(why) => write!(f, "socket closed: {why}"),
            CloseReason::StoreFailed(why) => write!(f, "store failure: {why}"),
            CloseReason::CredentialsUnreadable(why) => write!(
                f,
                "stored credentials are unreadable ({why}); quarantine them or log out"
            ),
            CloseReason::RestartRequired
            | CloseReason::Replaced
            | CloseReason::QrTimeout
            | CloseReason::LinkCodeTimeout
            | CloseReason::ServerClosed
            | CloseReason::ClientClosed => f.write_str(self.fixed_text().unwrap_or_default()),
        }
    }
}

/// Something the owner of the connection must act on.
pub enum Event {
    /// A QR code to show; valid until `expires_at_ms`.
    Qr { code: String, expires_at_ms: u64 },
    /// A link code to type on the phone (`ABCD-EFGH`); valid until
    /// `expires_at_ms`.
    LinkCode { code: String, expires_at_ms: u64 },
    /// [`Connection::credentials`] changed: persist them before sending.
    CredentialsChanged,
    /// The phone linked this device; the server will ask for a restart.
    Paired {
        jid: Jid,
        platform: String,
        business_name: Option<String>,
    },
    /// A `pair-success` was refused (the error was answered to the server).
    PairError(PairError),
    /// Logged in.
    Connected {
        jid: Jid,
        lid: Option<Jid>,
        server_time: Option<u64>,
    },
    /// A stanza the core does not handle itself (messages, receipts,
    /// notifications, iq results of the caller's queries, …).
    Stanza(Node),
    /// The connection ended; no transmits follow.
    Closed(CloseReason),
}

// Hand-written: a QR code carries the ADV secret and never reaches a log.
impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Qr { expires_at_ms, .. } => f
                .debug_struct("Qr")
                .field("code", &"<redacted>")
                .field("expires_at_ms", expires_at_ms)
                .finish(),
            Event::LinkCode { expires_at_ms, .. } => f
                .debug_struct("LinkCode")
                .field("code", &"<redacted>")
                .field("expires_at_ms", expires_at_ms)
                .finish(),
            Event::CredentialsChanged => f.write_str("CredentialsChanged"),
            Event::Paired { platform, .. } => f
                .debug_struct("Paired")
                .field("platform", platform)
                .finish_non_exhaustive(),
            Event::PairError(e) => f.debug_tuple("PairError").field(e).finish(),
            Event::Connected { server_time, .. } => f
                .debug_struct("Connected")
                .field("server_time", server_time)
                .finish_non_exhaustive(),
            Event::Stanza(node) => f.debug_tuple("Stanza").field(&node.tag()).finish(),
            Event::Closed(reason) => f.debug_tuple("Closed").field(reason).finish(),
        }
    }
}

/// Calls that are not possible in the connection's current state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnError {
    #[error("not logged in")]
    NotConnected,
    #[error("connection is closed")]
    Closed,
}

/// Iqs the core sent and waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OwnIq {
    Ping,
    Active,
    Logout,
    LinkCodeHello,
    LinkCodeFinish,
}

/// How a device that is not paired yet pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pairing {
    /// Show QR codes for the phone to scan.
    #[default]
    Qr,
    /// Ask for a link code for this phone number, to type on the phone.
    LinkCode(PhoneNumber),
}

/// Where a link-code pairing stands.
enum LinkCodeStep {
    /// `companion_hello` sent as iq `id`; waiting for the server's ref.
    Requested {
        request: Box<LinkCodeRequest>,
        id: String,
    },
    /// The code is shown; waiting for the phone's notification, then for
    /// `pair-success`.
    Shown { awaiting: Box<AwaitingPhone> },
}

enum Stage {
    /// Paired device: waiting for `success` or `failure`.
    AwaitingLogin {
        deadline: u64,
    },
    /// New device: waiting for the server's refs.
    AwaitingPairDevice {
        deadline: u64,
    },
    ShowingQr {
        refs: Vec<String>,
        index: usize,
        expires_at: u64,
    },
    /// Pairing by link code; the code lives as long as the QR codes would
    /// have altogether (`expires_at`).
    LinkCode {
        refs: Vec<String>,
        step: LinkCodeStep,
        expires_at: u64,
    },
    /// Pairing answered; waiting for the server's restart request.
    Paired {
        deadline: u64,
    },
    Connected {
        last_recv: u64,
        next_ping: u64,
        ping_deadline: Option<u64>,
    },
    LoggingOut {
        deadline: u64,
    },
}

enum Phase {
    Handshake {
        handshake: Box<ClientHandshake>,
        deadline: u64,
    },
    Open {
        transport: Box<Transport>,
        stage: Stage,
    },
    Closed(CloseReason),
}

/// A client connection to the chat server.
pub struct Connection {
    config: ClientConfig,
    creds: Credentials,
    rng: StdRng,
    decoder: FrameDecoder,
    phase: Phase,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    iq_prefix: String,
    iq_counter: u64,
    own_iqs: HashMap<String, OwnIq>,
    pairing: Pairing,
}

impl Connection {
    /// Starts a connection: the first transmit (intro + client hello) is
    /// ready at once. `seed` feeds every random choice of this connection.
    pub fn new(config: ClientConfig, creds: Credentials, seed: [u8; 32], now_ms: u64) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let ephemeral = crate::wa::crypto::KeyPair::generate(&mut rng);
        let (handshake, hello) = ClientHandshake::start(ephemeral);
        let mut first = noise::client_intro(config.routing_info.as_deref());
        let mut transmits = VecDeque::new();
        let phase = match noise::encode_frame(&hello, &mut first) {
            Ok(()) => {
                transmits.push_back(first);
                Phase::Handshake {
                    handshake: Box::new(handshake),
                    deadline: now_ms + config.timeouts.handshake_ms,
                }
            }
            Err(e) => Phase::Closed(CloseReason::Protocol(e.to_string())),
        };
        let iq_prefix = format!("{}.{}-", rng.gen::<u16>(), rng.gen::<u16>());
        let mut conn = Self {
            config,
            creds,
            rng,
            decoder: FrameDecoder::new(),
            phase,
            transmits,
            events: VecDeque::new(),
            iq_prefix,
            iq_counter: 0,
            own_iqs: HashMap::new(),
            pairing: Pairing::Qr,
        };
        if let Phase::Closed(reason) = &conn.phase {
            conn.events.push_back(Event::Closed(reason.clone()));
        }
        conn
    }

    /// How this connection pairs if the device is new (QR by default).
    pub fn with_pairing(mut self, pairing: Pairing) -> Self {
        self.pairing = pairing;
        self
    }

    /// Changes how a device that is not paired yet pairs. While codes are
    /// shown, switches at once: a new link code (for a new number), or QR
    /// codes for the rest of the pairing window. A no-op for a paired device
    /// or the same method.
    pub fn set_pairing(&mut self, pairing: Pairing, now_ms: u64) {
        if pairing == self.pairing {
            return;
        }
        self.pairing = pairing;
        let next_ms = self.config.timeouts.qr_next_ms;
        let Phase::Open { stage, .. } = &mut self.phase else {
            return;
        };
        // The pairing window (all QR codes' lifetimes) carries over.
        let (refs, window_end) = match stage {
            Stage::ShowingQr {
                refs,
                index,
                expires_at,
            } => {
                let left = refs.len().saturating_sub(*index + 1) as u64;
                (
                    std::mem::take(refs),
                    expires_at.saturating_add(left.saturating_mul(next_ms)),
                )
            }
            Stage::LinkCode {
                refs, expires_at, ..
            } => (std::mem::take(refs), *expires_at),
            _ => return,
        };
        match self.pairing.clone() {
            Pairing::LinkCode(phone) => self.request_link_code(phone, refs, window_end),
            Pairing::Qr => {
                // QR codes from the first ref again, as if just issued.
                if let Phase::Open { stage, .. } = &mut self.phase {
                    *stage = Stage::ShowingQr {
                        refs,
                        index: 0,
                        expires_at: now_ms + self.config.timeouts.qr_first_ms,
                    };
                }
                self.emit_qr();
            }
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed(_))
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match &self.phase {
            Phase::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether the connection is logged in.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.phase,
            Phase::Open {
                stage: Stage::Connected { .. },
                ..
            }
        )
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant `handle_timeout` must be called, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        match &self.phase {
            Phase::Handshake { deadline, .. } => Some(*deadline),
            Phase::Closed(_) => None,
            Phase::Open { stage, .. } => Some(match stage {
                Stage::AwaitingLogin { deadline }
                | Stage::AwaitingPairDevice { deadline }
                | Stage::Paired { deadline }
                | Stage::LoggingOut { deadline } => *deadline,
                Stage::ShowingQr { expires_at, .. } | Stage::LinkCode { expires_at, .. } => {
                    *expires_at
                }
                Stage::Connected {
                    next_ping,
                    ping_deadline,
                    ..
                } => ping_deadline.map_or(*next_ping, |d| d.min(*next_ping)),
            }),
        }
    }

    /// Bytes of one websocket message from the server.
    pub fn handle_data(&mut self, data: &[u8], now_ms: u64) {
        if self.is_closed() {
            return;
        }
        self.decoder.push(data);
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => self.handle_frame(&frame, now_ms),
                Ok(None) => break,
                Err(e) => {
                    self.close(CloseReason::Protocol(format!("framing: {e}")));
                    break;
                }
            }
            if self.is_closed() {
                break;
            }
        }
    }

    /// Fires expired timers.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let timeouts = self.config.timeouts.clone();
        let mut send_ping = false;
        let mut qr_advance = false;
        let expired: Option<CloseReason> = match &mut self.phase {
            Phase::Closed(_) => None,
            Phase::Handshake { deadline, .. } => {
                (now_ms >= *deadline).then_some(CloseReason::Timeout("handshake"))
            }
            Phase::Open { stage, .. } => match stage {
                Stage::AwaitingLogin { deadline } | Stage::AwaitingPairDevice { deadline } => {
                    (now_ms >= *deadline).then_some(CloseReason::Timeout("login"))
                }
                Stage::Paired { deadline } => {
                    (now_ms >= *deadline).then_some(CloseReason::Timeout("restart after pairing"))
                }
                Stage::LoggingOut { deadline } => (now_ms >= *deadline).then(|| {
                    CloseReason::LoggedOut("logout requested; server did not answer".into())
                }),
                Stage::ShowingQr { expires_at, .. } => {
                    qr_advance = now_ms >= *expires_at;
                    None
                }
                Stage::LinkCode { expires_at, .. } => {
                    (now_ms >= *expires_at).then_some(CloseReason::LinkCodeTimeout)
                }
                Stage::Connected {
                    last_recv,
                    next_ping,
                    ping_deadline,
                } => {
                    if ping_deadline.is_some_and(|d| now_ms >= d) {
                        if now_ms >= *last_recv + timeouts.keepalive_deadline_ms {
                            Some(CloseReason::Timeout("keepalive"))
                        } else {
                            // Something arrived after the ping: the link is alive.
                            *ping_deadline = None;
                            None
                        }
                    } else {
                        if now_ms >= *next_ping && ping_deadline.is_none() {
                            send_ping = true;
                        }
                        None
                    }
                }
            },
        };
        if let Some(reason) = expired {
            self.close(reason);
            return;
        }
        if qr_advance {
            self.advance_qr(now_ms);
        }
        if send_ping {
            let interval = self.rng.gen_range(
                timeouts.keepalive_min_ms
                    ..=timeouts.keepalive_max_ms.max(timeouts.keepalive_min_ms),
            );
            if let Phase::Open {
                stage:
                    Stage::Connected {
                        next_ping,
                        ping_deadline,
                        ..
                    },
                ..
            } = &mut self.phase
            {
                *next_ping = ping_slot(now_ms + interval, &timeouts);
                *ping_deadline = Some(now_ms + timeouts.keepalive_deadline_ms);
            }
            let ping = Node::new("iq")
                .attr("xmlns", "w:p")
                .attr("type", "get")
                .children(vec![Node::new("ping")]);
            self.send_own_iq(ping, OwnIq::Ping);
        }
    }

    /// Sends a stanza (only when logged in).
    pub fn send_node(&mut self, node: &Node) -> Result<(), ConnError> {
        match &self.phase {
            Phase::Closed(_) => Err(ConnError::Closed),
            Phase::Open {
                stage: Stage::Connected { .. },
                ..
            } => {
                self.write_node(node);
                Ok(())
            }
            _ => Err(ConnError::NotConnected),
        }
    }

    /// A fresh iq id, unique within this connection.
    pub fn next_iq_id(&mut self) -> String {
        self.iq_counter += 1;
        format!("{}{}", self.iq_prefix, self.iq_counter)
    }

    /// Unlinks this device: asks the server to remove it, then ends with
    /// [`CloseReason::LoggedOut`].
    pub fn logout(&mut self, now_ms: u64) -> Result<(), ConnError> {
        let own = match &self.phase {
            Phase::Closed(_) => return Err(ConnError::Closed),
            Phase::Open {
                stage: Stage::Connected { .. },
                ..
            } => self.creds.account.as_ref().map(|a| a.jid.clone()),
            _ => return Err(ConnError::NotConnected),
        };
        let Some(own) = own else {
            return Err(ConnError::NotConnected);
        };
        let iq = Node::new("iq")
            .attr("xmlns", "md")
            .attr("type", "set")
            .children(vec![Node::new("remove-companion-device")
                .attr("jid", own)
                .attr("reason", "user_initiated")]);
        self.send_own_iq(iq, OwnIq::Logout);
        if let Phase::Open { stage, .. } = &mut self.phase {
            *stage = Stage::LoggingOut {
                deadline: now_ms + self.config.timeouts.logout_ms,
            };
        }
        Ok(())
    }

    /// Sends an iq of the caller's to the server with a fresh id, which is
    /// returned; its answer comes back as [`Event::Stanza`].
    pub fn send_iq(&mut self, node: Node) -> Result<String, ConnError> {
        if !self.is_connected() {
            return Err(if self.is_closed() {
                ConnError::Closed
            } else {
                ConnError::NotConnected
            });
        }
        let id = self.next_iq_id();
        let node = node.attr("id", id.clone());
        let node = if node.attr_value("to").is_some() {
            node
        } else {
            node.attr("to", Jid::server_jid())
        };
        self.write_node(&node);
        Ok(id)
    }

    /// Ends the connection from our side; nothing more is sent.
    pub fn shutdown(&mut self) {
        self.close(CloseReason::ClientClosed);
    }

    /// Reports that the socket closed; ends the connection if it was still open.
    pub fn handle_socket_closed(&mut self, why: &str) {
        self.close(CloseReason::SocketClosed(why.to_owned()));
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.is_closed() {
            self.end(reason);
        }
    }

    /// Ends the connection unconditionally; used where the phase holds a
    /// placeholder while its state is being consumed.
    fn end(&mut self, reason: CloseReason) {
        self.transmits.clear();
        self.phase = Phase::Closed(reason.clone());
        self.events.push_back(Event::Closed(reason));
    }

    fn handle_frame(&mut self, frame: &[u8], now_ms: u64) {
        match std::mem::replace(&mut self.phase, Phase::Closed(CloseReason::ClientClosed)) {
            Phase::Handshake { handshake, .. } => self.finish_handshake(*handshake, frame, now_ms),
            Phase::Open {
                mut transport,
                stage,
            } => match transport.decrypt(frame) {
                Ok(plain) => {
                    self.phase = Phase::Open { transport, stage };
                    match binary::unmarshal(&plain) {
                        Ok(node) => self.handle_node(node, now_ms),
                        Err(e) => self.close(CloseReason::Protocol(format!("bad stanza: {e}"))),
                    }
                }
                Err(e) => {
                    self.phase = Phase::Open { transport, stage };
                    self.close(CloseReason::Protocol(format!("frame decryption: {e}")));
                }
            },
            closed @ Phase::Closed(_) => self.phase = closed,
        }
    }

    fn finish_handshake(&mut self, handshake: ClientHandshake, frame: &[u8], now_ms: u64) {
        let paired = self.creds.account.is_some();
        let client_payload = if paired {
            match payload::login_payload(&self.creds, &self.config.device) {
                Ok(p) => p,
                Err(e) => return self.end(CloseReason::Protocol(e.to_string())),
            }
        } else {
            payload::registration_payload(&self.creds, &self.config.device)
        };
        let result = handshake.finish(
            frame,
            &self.creds.noise_key,
            &client_payload,
            &self.config.root_key,
            now_ms / 1000,
        );
        match result {
            Ok((finish, transport)) => {
                let mut out = Vec::with_capacity(finish.len() + 3);
                if let Err(e) = noise::encode_frame(&finish, &mut out) {
                    return self.end(CloseReason::Protocol(e.to_string()));
                }
                self.transmits.push_back(out);
                let deadline = now_ms + self.config.timeouts.handshake_ms;
                let stage = if paired {
                    Stage::AwaitingLogin { deadline }
                } else {
                    Stage::AwaitingPairDevice { deadline }
                };
                self.phase = Phase::Open {
                    transport: Box::new(transport),
                    stage,
                };
            }
            Err(e) => {
                let reason = if matches!(e, noise::NoiseError::Certificate(_)) {
                    CloseReason::CertificateRejected(e.to_string())
                } else {
                    CloseReason::Protocol(format!("handshake: {e}"))
                };
                self.end(reason);
            }
        }
    }

    fn handle_node(&mut self, node: Node, now_ms: u64) {
        if let Phase::Open {
            stage: Stage::Connected { last_recv, .. },
            ..
        } = &mut self.phase
        {
            *last_recv = now_ms;
        }
        match node.tag() {
            "stream:error" => {
                let reason = classify_stream_error(&node);
                self.close(reason);
            }
            "xmlstreamend" => self.close(CloseReason::ServerClosed),
            "failure" => {
                // A reason that does not fit is no known code (never, say,
                // 2^32 + 401 read as a logout).
                let code = node
                    .attr_u64("reason")
                    .and_then(|r| u32::try_from(r).ok())
                    .unwrap_or(0);
                let reason = match code {
                    401 => CloseReason::LoggedOut("failure 401: device logged out".into()),
                    403 => CloseReason::LoggedOut("failure 403: main device gone".into()),
                    406 => CloseReason::LoggedOut("failure 406: unknown logout".into()),
                    _ => CloseReason::ConnectFailure(code),
                };
                self.close(reason);
            }
            "success" => self.handle_success(&node, now_ms),
            "iq" => self.handle_iq(node, now_ms),
            "notification" if node.attr_str("type") == Some(link_code::NOTIFICATION_TYPE) => {
                self.handle_link_code_notification(&node)
            }
            _ => self.events.push_back(Event::Stanza(node)),
        }
    }

    fn handle_success(&mut self, node: &Node, now_ms: u64) {
        let Phase::Open { stage, .. } = &mut self.phase else {
            return;
        };
        if !matches!(stage, Stage::AwaitingLogin { .. }) {
            // `success` without a login (e.g. while pairing) is ignored, as
            // WhatsApp Web does.
            return;
        }
        let next_ping = ping_slot(
            now_ms + self.config.timeouts.keepalive_min_ms,
            &self.config.timeouts,
        );
        *stage = Stage::Connected {
            last_recv: now_ms,
            next_ping,
            ping_deadline: None,
        };
        let lid = node.attr_jid("lid");
        let mut changed = false;
        let jid = match self.creds.account.as_mut() {
            Some(account) => {
                if lid.is_some() && account.lid != lid {
                    account.lid = lid.clone();
                    changed = true;
                }
                account.jid.clone()
            }
            None => return self.close(CloseReason::Protocol("success without account".into())),
        };
        if changed {
            self.events.push_back(Event::CredentialsChanged);
        }
        self.events.push_back(Event::Connected {
            jid,
            lid,
            server_time: node.attr_u64("t"),
        });
        let active = Node::new("iq")
            .attr("xmlns", "passive")
            .attr("type", "set")
            .children(vec![Node::new("active")]);
        self.send_own_iq(active, OwnIq::Active);
    }

    fn handle_iq(&mut self, node: Node, now_ms: u64) {
        let id = node.attr_string("id").unwrap_or_default();
        let kind = node.attr_str("type").unwrap_or_default().to_owned();
        if kind == "result" || kind == "error" {
            match self.own_iqs.remove(&id) {
                Some(OwnIq::Ping) => {
                    if let Phase::Open {
                        stage: Stage::Connected { ping_deadline, .. },
                        ..
                    } = &mut self.phase
                    {
                        *ping_deadline = None;
                    }
                }
                Some(OwnIq::Active) => {}
                Some(OwnIq::LinkCodeHello) => self.handle_link_code_reply(&id, &node),
                Some(OwnIq::LinkCodeFinish) => {
                    // A refused finish means the phone could not open the
                    // key bundle: the code typed there was wrong. The code
                    // stays valid for another try.
                    if kind == "error" {
                        self.events.push_back(Event::PairError(PairError::LinkCode(
                            LinkCodeError::Refused(iq_error_text(&node)),
                        )));
                    }
                }
                Some(OwnIq::Logout) => {
                    let why = if kind == "result" {
                        "logout requested".to_owned()
                    } else {
                        "logout requested; server answered an error".to_owned()
                    };
                    self.close(CloseReason::LoggedOut(why));
                }
                None => self.events.push_back(Event::Stanza(node)),
            }
            return;
        }
        if kind == "get" && node.attr_str("xmlns") == Some("urn:xmpp:ping") {
            let reply = Node::new("iq")
                .attr("to", Jid::server_jid())
                .attr("type", "result")
                .attr("id", id);
            self.write_node(&reply);
            return;
        }
        if kind == "set" {
            if let Some(pair_device) = node.child("pair-device") {
                let refs: Vec<String> = pair_device
                    .child_nodes()
                    .iter()
                    .filter(|c| c.tag() == "ref")
                    .filter_map(|c| c.content_bytes())
                    .filter_map(|b| std::str::from_utf8(b).ok())
                    .map(str::to_owned)
                    .collect();
                let reply = Node::new("iq")
                    .attr("to", Jid::server_jid())
                    .attr("type", "result")
                    .attr("id", id);
                self.write_node(&reply);
                match self.pairing.clone() {
                    Pairing::Qr => self.start_qr(refs, now_ms),
                    Pairing::LinkCode(phone) => {
                        if matches!(
                            self.phase,
                            Phase::Open {
                                stage: Stage::AwaitingPairDevice { .. },
                                ..
                            }
                        ) {
                            let window = self.config.timeouts.qr_first_ms.saturating_add(
                                (refs.len().saturating_sub(1) as u64)
                                    .saturating_mul(self.config.timeouts.qr_next_ms),
                            );
                            self.request_link_code(phone, refs, now_ms.saturating_add(window));
                        }
                    }
                }
                return;
            }
            if let Some(success) = node.child("pair-success") {
                self.handle_pair_success(&id, success, now_ms);
                return;
            }
        }
        self.events.push_back(Event::Stanza(node));
    }

    fn start_qr(&mut self, refs: Vec<String>, now_ms: u64) {
        let Phase::Open { stage, .. } = &mut self.phase else {
            return;
        };
        if !matches!(
            stage,
            Stage::AwaitingPairDevice { .. } | Stage::ShowingQr { .. }
        ) {
            return;
        }
        if refs.is_empty() {
            return self.close(CloseReason::Protocol("pair-device without refs".into()));
        }
        let expires_at = now_ms + self.config.timeouts.qr_first_ms;
        *stage = Stage::ShowingQr {
            refs,
            index: 0,
            expires_at,
        };
        self.emit_qr();
    }

    fn advance_qr(&mut self, now_ms: u64) {
        let next_ms = self.config.timeouts.qr_next_ms;
        let Phase::Open {
            stage:
                Stage::ShowingQr {
                    refs,
                    index,
                    expires_at,
                },
            ..
        } = &mut self.phase
        else {
            return;
        };
        if *index + 1 >= refs.len() {
            return self.close(CloseReason::QrTimeout);
        }
        *index += 1;
        *expires_at = now_ms + next_ms;
        self.emit_qr();
    }

    fn emit_qr(&mut self) {
        let Phase::Open {
            stage:
                Stage::ShowingQr {
                    refs,
                    index,
                    expires_at,
                },
            ..
        } = &self.phase
        else {
            return;
        };
        let Some(reference) = refs.get(*index) else {
            return;
        };
        let data = QrData {
            reference: reference.clone(),
            noise_public: self.creds.noise_key.public,
            identity_public: self.creds.identity_key.public,
            adv_secret: *self.creds.adv_secret,
            platform: None,
        };
        self.events.push_back(Event::Qr {
            code: data.to_url(&self.config.qr_platform),
            expires_at_ms: *expires_at,
        });
    }

    fn handle_pair_success(&mut self, id: &str, success: &Node, now_ms: u64) {
        let showing = matches!(
            self.phase,
            Phase::Open {
                stage: Stage::ShowingQr { .. }
                    | Stage::AwaitingPairDevice { .. }
                    | Stage::LinkCode { .. },
                ..
            }
        );
        if !showing {
            let err = PairError::Missing("a pairing in progress");
            self.write_node(&pairing::pair_error_reply(id, &err));
            return;
        }
        match pairing::handle_pair_success(id, success, &self.creds, &mut self.rng) {
            Ok(paired) => {
                self.events.push_back(Event::Paired {
                    jid: paired.account.jid.clone(),
                    platform: paired.account.platform.clone(),
                    business_name: paired.account.business_name.clone(),
                });
                self.creds.account = Some(paired.account);
                // Persist before the reply goes out (see module docs).
                self.events.push_back(Event::CredentialsChanged);
                self.write_node(&paired.reply);
                if let Phase::Open { stage, .. } = &mut self.phase {
                    *stage = Stage::Paired {
                        deadline: now_ms + self.config.timeouts.handshake_ms,
                    };
                }
            }
            Err(err) => {
                self.write_node(&pairing::pair_error_reply(id, &err));
                self.events.push_back(Event::PairError(err));
            }
        }
    }

    /// Sends `companion_hello` for a fresh code; the code is shown once the
    /// server answers with its ref.
    fn request_link_code(&mut self, phone: PhoneNumber, refs: Vec<String>, expires_at: u64) {
        if refs.is_empty() {
            return self.close(CloseReason::Protocol("pair-device without refs".into()));
        }
        let platform = CompanionPlatform {
            id: self.config.qr_platform.clone(),
            display: self.config.link_code_display.clone(),
        };
        let (request, iq) = LinkCodeRequest::start(&phone, &self.creds, &platform, &mut self.rng);
        let id = self.send_own_iq(iq, OwnIq::LinkCodeHello);
        if let Phase::Open { stage, .. } = &mut self.phase {
            *stage = Stage::LinkCode {
                refs,
                step: LinkCodeStep::Requested {
                    request: Box::new(request),
                    id,
                },
                expires_at,
            };
        }
    }

    /// The server's answer to `companion_hello`.
    fn handle_link_code_reply(&mut self, id: &str, reply: &Node) {
        let Phase::Open {
            stage: Stage::LinkCode {
                step, expires_at, ..
            },
            ..
        } = &mut self.phase
        else {
            return;
        };
        // An answer to a request a newer one replaced is ignored.
        if !matches!(step, LinkCodeStep::Requested { id: want, .. } if want == id) {
            return;
        }
        let expires_at_ms = *expires_at;
        let LinkCodeStep::Requested { request, .. } = step else {
            return;
        };
        match request.handle_reply(reply) {
            Ok(awaiting) => {
                let code = awaiting.code().display();
                *step = LinkCodeStep::Shown {
                    awaiting: Box::new(awaiting),
                };
                self.events.push_back(Event::LinkCode {
                    code,
                    expires_at_ms,
                });
            }
            Err(LinkCodeError::Refused(why)) => self.close(CloseReason::LinkCodeRefused(why)),
            Err(e) => self.close(CloseReason::Protocol(format!("link code: {e}"))),
        }
    }

    /// The phone's `link_code_companion_reg` notification: acked always;
    /// answered with `companion_finish` while our code is shown.
    fn handle_link_code_notification(&mut self, node: &Node) {
        if let Some(ack) = stanza_ack(node) {
            self.write_node(&ack);
        }
        let Phase::Open {
            stage:
                Stage::LinkCode {
                    step: LinkCodeStep::Shown { awaiting },
                    ..
                },
            ..
        } = &self.phase
        else {
            return;
        };
        let Some(reg) = node.child(link_code::REG_TAG) else {
            let err = LinkCodeError::Missing(link_code::REG_TAG);
            return self.events.push_back(Event::PairError(err.into()));
        };
        match awaiting.handle_notification(reg, &self.creds, &mut self.rng) {
            Ok(finish) => {
                // The pair-success HMAC is keyed with the new secret:
                // persisted before the phone can send it.
                self.creds.adv_secret = finish.adv_secret;
                self.events.push_back(Event::CredentialsChanged);
                self.send_own_iq(finish.iq, OwnIq::LinkCodeFinish);
            }
            Err(e) => self.events.push_back(Event::PairError(e.into())),
        }
    }

    fn send_own_iq(&mut self, node: Node, purpose: OwnIq) -> String {
        let id = self.next_iq_id();
        let node = node.attr("id", id.clone()).attr("to", Jid::server_jid());
        self.own_iqs.insert(id.clone(), purpose);
        self.write_node(&node);
        id
    }

    fn write_node(&mut self, node: &Node) {
        let Phase::Open { transport, .. } = &mut self.phase else {
            return;
        };
        let plain = binary::marshal(node);
        let result = transport.encrypt(&plain).and_then(|ct| {
            let mut out = Vec::with_capacity(ct.len() + 3);
            noise::encode_frame(&ct, &mut out).map(|()| out)
        });
        match result {
            Ok(frame) => self.transmits.push_back(frame),
            Err(e) => self.close(CloseReason::Protocol(format!("encrypt: {e}"))),
        }
    }
}

/// Keepalive pings are due on whole slots of a two-hundredth of the
/// shortest interval (100 ms by default): the pings of thousands of idle
/// sessions then fall due together, tens per wake-up of the process
/// instead of one each, and a slot's burst stays short enough not to delay
/// the messages behind it. The interval stays random within WhatsApp Web's
/// range, rounded up by at most one slot.
fn ping_slot(at_ms: u64, timeouts: &Timeouts) -> u64 {
    let slot = (timeouts.keepalive_min_ms / 200).clamp(1, 100);
    at_ms.div_ceil(slot).saturating_mul(slot)
}

/// `code text` of an iq error, for reports.
fn iq_error_text(node: &Node) -> String {
    node.child("error")
        .map(|e| {
            format!(
                "{} {}",
                e.attr_str("code").unwrap_or("?"),
                e.attr_str("text").unwrap_or_default()
            )
            .trim()
            .to_owned()
        })
        .unwrap_or_else(|| "iq error".to_owned())
}

/// Classifies `<stream:error>` as WhatsApp Web does.
fn classify_stream_error(node: &Node) -> CloseReason {
    let code = node.attr_string("code").unwrap_or_default();
    if let Some(conflict) = node.child("conflict") {
        match conflict.attr_str("type") {
            Some("replaced") => return CloseReason::Replaced,
            Some("device_removed") => {
                return CloseReason::LoggedOut("device removed by the phone".into())
            }
            _ => {}
        }
    }
    match code.as_str() {
        "515" => CloseReason::RestartRequired,
        "401" => CloseReason::LoggedOut("stream error 401".into()),
        "" => {
            let child = node
                .child_nodes()
                .first()
                .map(|c| c.tag().to_owned())
                .unwrap_or_else(|| "unknown".to_owned());
            CloseReason::StreamError(child)
        }
        other => CloseReason::StreamError(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{ping_slot, CloseReason, Timeouts};

    #[test]
    fn pings_fall_due_on_shared_slots_within_the_range() {
        let defaults = Timeouts::default();
        // Sessions whose pings were drawn tens of ms apart wake together, at
        // most one slot later than drawn.
        for at in [1_700_000_020_001, 1_700_000_020_040, 1_700_000_020_100] {
            let due = ping_slot(at, &defaults);
            assert_eq!(due, 1_700_000_020_100, "{at}");
        }
        assert_eq!(ping_slot(1_700_000_020_101, &defaults), 1_700_000_020_200);
        // Short test intervals get short slots.
        let quick = Timeouts {
            keepalive_min_ms: 1_000,
            keepalive_max_ms: 1_500,
            ..Timeouts::default()
        };
        assert_eq!(ping_slot(1_001, &quick), 1_005);
        let tiny = Timeouts {
            keepalive_min_ms: 100,
            ..Timeouts::default()
        };
        assert_eq!(ping_slot(1_001, &tiny), 1_001);
        assert_eq!(ping_slot(u64::MAX - 3, &defaults), u64::MAX);
    }

    #[test]
    fn a_reason_text_is_its_display_and_borrowed_when_fixed() {
        let fixed = [
            CloseReason::RestartRequired,
            CloseReason::Replaced,
            CloseReason::QrTimeout,
            CloseReason::LinkCodeTimeout,
            CloseReason::ServerClosed,
            CloseReason::ClientClosed,
        ];
        for reason in fixed {
            assert!(matches!(reason.text(), Cow::Borrowed(_)), "{reason}");
            assert_eq!(reason.text(), reason.to_string());
        }
        let detailed = [
            CloseReason::LoggedOut("401".into()),
            CloseReason::StreamError("503".into()),
            CloseReason::ConnectFailure(405),
            CloseReason::LinkCodeRefused("unknown number".into()),
            CloseReason::Timeout("login"),
            CloseReason::CertificateRejected("expired".into()),
            CloseReason::Protocol("bad frame".into()),
            CloseReason::SocketClosed("reset".into()),
        ];
        for reason in detailed {
            assert_eq!(reason.text(), reason.to_string());
        }
    }
}
