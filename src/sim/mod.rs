//! A simulator of WhatsApp's chat server: the websocket endpoint WhatsApp
//! Web clients connect to (Noise handshake, QR pairing, login, prekeys,
//! keepalive), virtual phones that scan QR codes, and a control API for
//! tests and demos (faults, delays, listings). May import `wa` only.

mod app_state;
pub mod cli;
mod conn;
mod control;
mod control_content;
mod group_message;
mod group_routing;
mod groups;
mod keys;
mod lid;
mod link_code;
mod mailbox;
mod media;
mod messaging;
mod phone;
mod phone_content;
mod phone_history;
mod phone_media;
mod phone_sync;
mod presence;
mod presence_routing;
mod registry;
mod routing;
mod sender_keys;
mod snapshot;
mod stanza;
mod usync;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use crate::proto::sim::simulator_server::SimulatorServer;
use crate::proto::wa::{AdvDeviceIdentity, AdvSignedDeviceIdentity, AdvSignedDeviceIdentityHmac};
use crate::wa::adv::{account_signature_message, details_hmac};
use crate::wa::crypto::KeyPair;
use crate::wa::jid::{Jid, PhoneNumber, DEFAULT_USER_SERVER};
use crate::wa::qr::{QrData, QrError};
use crate::wa::signal;

pub use app_state::ChatSettingsChange;
pub use control::Control;
pub use groups::{Action as GroupAction, GroupError, GroupInfo, GroupMember};
pub use link_code::DEFAULT_LINK_CODE_TTL;
pub use media::{MediaConfig, MediaHostError, DEFAULT_MAX_UPLOAD};
pub use phone::{InboxMedia, InboxMessage};
pub use phone_content::{InboxContent, PhoneContent};
pub use phone_media::MediaSend;
pub use registry::{AccountInfo, DeviceInfo};
use registry::{
    Command, CompanionBundle, Device, NewAccount, PairRefusal, Registry, Reservation, ReserveError,
    SignedPreKey, Termination,
};
pub use snapshot::{InvalidState, StateError};

/// Most texts one `send_texts` call sends: the ids are answered in one
/// response, which must stay well under gRPC's default 4 MiB limit.
pub const MAX_BULK_TEXTS: u32 = 100_000;

/// A bulk send's count, refused past [`MAX_BULK_TEXTS`].
fn bulk_count(count: u32) -> Result<(), SimError> {
    if count > MAX_BULK_TEXTS {
        return Err(SimError::TooManyTexts(count));
    }
    Ok(())
}

/// Most accounts one `ListAccounts` page holds (and the page size when none
/// is asked for): a few MB of response at most.
pub const MAX_ACCOUNTS_PAGE: usize = 10_000;

/// How long a phone waits for the companion to countersign its identity.
const PAIR_TIMEOUT: Duration = Duration::from_secs(20);
/// One-time prekeys a virtual device starts with (its signed prekey serves
/// once they are used up).
const VIRTUAL_DEVICE_PREKEYS: u32 = 16;

/// Where and how the simulator runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address of the chat websocket (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Seed for every key the simulator makes (root key included); random
    /// when `None`.
    pub seed: Option<u64>,
    /// Where accounts, devices, groups and queued stanzas are kept across
    /// restarts (see the `snapshot` module); in memory only when `None`.
    pub data_dir: Option<PathBuf>,
}

/// Errors of the simulator's in-process and control APIs.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid QR code: {0}")]
    InvalidQr(#[from] QrError),
    #[error("invalid phone number: {0}")]
    InvalidPhone(String),
    #[error("invalid JID: {0}")]
    InvalidJid(String),
    #[error("no companion is waiting to pair with this QR code's noise key (expired, already paired, or never connected)")]
    NoPendingPairing,
    #[error("invalid link code: {0}")]
    InvalidLinkCode(crate::wa::link_code::LinkCodeError),
    #[error("no companion is waiting for a link code for this phone number (never asked, already paired, or disconnected)")]
    NoPendingLinkCode,
    #[error("the link code expired; the companion must ask for a new one")]
    LinkCodeExpired,
    #[error("wrong link code: the companion's key bundle does not open with it")]
    WrongLinkCode,
    #[error("the QR code's ref was not issued to this companion")]
    UnknownRef,
    #[error("the QR code's identity key is not the one the companion registered")]
    IdentityMismatch,
    #[error("account has no free device ids left")]
    DevicesExhausted,
    #[error("the companion disconnected before confirming the pairing")]
    CompanionGone,
    #[error("the companion did not confirm the pairing within {0:?}")]
    PairTimeout(Duration),
    #[error("the companion refused the pairing: code {code} {text}")]
    PairRefused { code: String, text: String },
    #[error("the companion's pairing confirmation is invalid: {0}")]
    InvalidPairConfirmation(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("{0} texts asked for; at most {MAX_BULK_TEXTS} per call")]
    TooManyTexts(u32),
    #[error("invalid history seed: {0}")]
    InvalidHistorySeed(String),
    #[error("invalid page token; pass the next_page_token of the previous page")]
    InvalidPageToken,
    #[error("the phone cannot encrypt: {0}")]
    Encryption(String),
    #[error("group: {0}")]
    Group(GroupError),
    #[error("media host: {0}")]
    MediaHost(#[from] MediaHostError),
    #[error("invalid media: {0}")]
    InvalidMedia(String),
    #[error("invalid content: {0}")]
    InvalidContent(String),
    #[error("cannot store media: {0}")]
    MediaStore(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("app state: {0}")]
    AppState(String),
}

/// The running simulator; cheap to clone (shared inside).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    registry: Registry,
    groups: groups::Groups,
    keys: keys::ServerKeys,
    /// Randomness for keys, refs and ids. Locked briefly, never across an
    /// `.await`, and never while a registry lock is held.
    rng: Mutex<StdRng>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    /// Every chat listener's address and accept loop: the first at `addr`,
    /// then those of [`Simulator::listen_also`].
    listeners: Mutex<Vec<(SocketAddr, JoinHandle<()>)>>,
    /// The HTTP host media is uploaded to and downloaded from.
    media: media::MediaServer,
    /// Who is online, who follows whom, and read-receipt privacy.
    presence: presence::Presences,
    /// Lifetime of link codes issued from now on, in milliseconds.
    link_code_ttl_ms: std::sync::atomic::AtomicU64,
    /// Where the state is saved, with a data dir.
    persistence: Option<snapshot::Persistence>,
    /// The task saving the state when it changed.
    save_task: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut rng = lock(&self.rng);
        f(&mut rng)
    }

    /// A QR ref as WhatsApp issues them: `2@` and random base64.
    pub(crate) fn new_ref(&self) -> String {
        let bytes: [u8; 24] = self.with_rng(|rng| {
            let mut b = [0u8; 24];
            rng.fill_bytes(&mut b);
            b
        });
        format!("2@{}", STANDARD.encode(bytes))
    }

    pub(crate) fn link_code_ttl_ms(&self) -> u64 {
        self.link_code_ttl_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The state worth keeping across a restart, copied one lock at a time.
    pub(crate) fn snapshot(&self, starts: u64) -> snapshot::Snapshot {
        let (groups, revoked_invites) = self.groups.saved();
        snapshot::Snapshot {
            keys: Some(self.keys.saved()),
            starts,
            accounts: self.registry.saved_accounts(),
            groups,
            revoked_invites,
            mailboxes: self.registry.saved_mailboxes(),
        }
    }

    /// An id for an iq the server sends.
    pub(crate) fn new_iq_id(&self) -> String {
        let n = self.with_rng(|rng| rng.next_u64());
        format!("{n:016x}")
    }
}

/// The chat websocket's URL at `addr`.
fn chat_url(addr: SocketAddr) -> String {
    format!("ws://{addr}{}", conn::CHAT_PATH)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay valid even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seconds since the Unix epoch by the host clock.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Simulator {
    /// Binds the chat websocket and starts accepting connections, with a
    /// media host on a free loopback port keeping blobs in memory.
    pub async fn start(config: SimConfig) -> Result<Self, SimError> {
        Self::start_with_media(config, MediaConfig::default()).await
    }

    /// [`Simulator::start`] with the media host configured.
    pub async fn start_with_media(config: SimConfig, media: MediaConfig) -> Result<Self, SimError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let restored = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| StateError::Write {
                    path: dir.clone(),
                    source,
                })?;
                snapshot::read(dir)?
            }
            None => None,
        };
        // A restarted seeded simulator must not repeat the ids and keys of
        // its previous run: the seed moves on with every start.
        let starts = restored.as_ref().map_or(0, |s| s.starts.saturating_add(1));
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed.wrapping_add(starts)),
            None => StdRng::from_entropy(),
        };
        let corrupt = |reason| {
            let path = config
                .data_dir
                .clone()
                .unwrap_or_default()
                .join(snapshot::FILE_NAME);
            SimError::State(StateError::Corrupt { path, reason })
        };
        let (keys, registry, groups) = match &restored {
            Some(state) => {
                let keys = state
                    .keys
                    .as_ref()
                    .ok_or_else(|| corrupt(InvalidState::field("no server keys")))
                    .and_then(|k| keys::ServerKeys::restore(k).map_err(corrupt))?;
                let registry =
                    Registry::restore(&state.accounts, &state.mailboxes).map_err(corrupt)?;
                let groups = groups::Groups::restore(&state.groups, &state.revoked_invites)
                    .map_err(corrupt)?;
                (keys, registry, groups)
            }
            None => (
                keys::ServerKeys::generate(&mut rng, unix_now()),
                Registry::default(),
                groups::Groups::default(),
            ),
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let media = media::MediaServer::start(media, rng.next_u64(), shutdown_rx.clone()).await?;
        let inner = Arc::new(Inner {
            registry,
            groups,
            keys,
            rng: Mutex::new(rng),
            addr,
            shutdown,
            listeners: Mutex::new(Vec::new()),
            media,
            presence: presence::Presences::default(),
            link_code_ttl_ms: std::sync::atomic::AtomicU64::new(
                u64::try_from(DEFAULT_LINK_CODE_TTL.as_millis()).unwrap_or(u64::MAX),
            ),
            persistence: config
                .data_dir
                .map(|dir| snapshot::Persistence::new(dir, starts)),
            save_task: Mutex::new(None),
        });
        if let Some(persistence) = &inner.persistence {
            // Saved at once: the root key clients are told to trust holds
            // from the first start on.
            snapshot::save(&inner).await?;
            debug!(dir = %persistence.dir().display(), starts, "simulator state kept on disk");
            let saver = tokio::spawn(snapshot::keep_saved(
                Arc::clone(&inner),
                shutdown_rx.clone(),
            ));
            *lock(&inner.save_task) = Some(saver);
        }
        let task = tokio::spawn(accept_loop(Arc::clone(&inner), listener, shutdown_rx));
        lock(&inner.listeners).push((addr, task));
        Ok(Self { inner })
    }

    /// The chat endpoint, `ws://127.0.0.1:PORT/ws/chat`.
    pub fn ws_url(&self) -> String {
        chat_url(self.inner.addr)
    }

    /// Serves the chat websocket on one more address too, and returns it.
    /// Clients on one loopback address pair run out of ephemeral ports
    /// (about 28,000 by default) before a box runs out of anything else, so
    /// tens of thousands of connections need several listening ports.
    pub async fn listen_also(&self, addr: SocketAddr) -> Result<SocketAddr, SimError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let shutdown = self.inner.shutdown.subscribe();
        if *shutdown.borrow() {
            return Err(SimError::Bind {
                addr,
                source: std::io::Error::other("the simulator is shutting down"),
            });
        }
        let task = tokio::spawn(accept_loop(Arc::clone(&self.inner), listener, shutdown));
        lock(&self.inner.listeners).push((bound, task));
        Ok(bound)
    }

    /// Every chat endpoint: [`Simulator::ws_url`] first, then those of
    /// [`Simulator::listen_also`].
    pub fn ws_urls(&self) -> Vec<String> {
        lock(&self.inner.listeners)
            .iter()
            .map(|(addr, _)| chat_url(*addr))
            .collect()
    }

    /// Base URL of the media host, e.g. `http://127.0.0.1:PORT`.
    pub fn media_url(&self) -> &str {
        self.inner.media.base_url()
    }

    /// The address the media host listens on.
    pub fn media_addr(&self) -> SocketAddr {
        self.inner.media.local_addr()
    }

    /// What a device asking `media_conn` now is told: upload auth and the
    /// media host.
    pub fn media_conn(&self) -> crate::wa::media::MediaConn {
        self.inner.media.media_conn(unix_now())
    }

    /// Expires the media blob of a direct path or URL: downloads answer 410
    /// Gone from then on. Returns whether a live blob was expired.
    pub async fn expire_media(&self, path_or_url: &str) -> bool {
        self.inner.media.expire(path_or_url).await
    }

    /// The address the chat websocket listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The root key that signs the server's certificate chain; clients
    /// must trust it instead of WhatsApp's.
    pub fn root_public_key(&self) -> [u8; 32] {
        self.inner.keys.root.public
    }

    /// The gRPC control service, to mount on any tonic server.
    pub fn control(&self) -> SimulatorServer<Control> {
        SimulatorServer::new(Control::new(self.clone()))
    }

    /// The phone `phone` scans `qr`: the waiting companion is paired to the
    /// account (created with `push_name` if new). Returns the device JID once
    /// the companion confirmed; the companion is then told to reconnect (515).
    pub async fn scan_qr(
        &self,
        phone: &PhoneNumber,
        qr: &str,
        push_name: &str,
    ) -> Result<Jid, SimError> {
        let qr = QrData::parse(qr)?;
        let now = unix_now();
        let inner = &self.inner;
        // Made before taking registry locks (locks never nest);
        // used only if the account is new.
        let new_account = inner.with_rng(NewAccount::generate);
        let reservation = inner
            .registry
            .reserve_device(
                phone,
                push_name,
                &qr.noise_public,
                &qr.reference,
                now,
                new_account,
            )
            .map_err(|err| match err {
                ReserveError::NoPending => SimError::NoPendingPairing,
                ReserveError::UnknownRef => SimError::UnknownRef,
                ReserveError::DevicesExhausted => SimError::DevicesExhausted,
            })?;
        if reservation.pending.bundle.identity != qr.identity_public {
            inner
                .registry
                .restore_pending(qr.noise_public, reservation.pending);
            return Err(SimError::IdentityMismatch);
        }

        self.finish_pairing(reservation, qr.noise_public, &qr.adv_secret, now)
            .await
    }

    /// Sends the reserved companion its `pair-success` (HMAC'd with
    /// `adv_secret`), checks its countersignature, adds the device and
    /// asks the companion to reconnect. Returns the device JID.
    async fn finish_pairing(
        &self,
        reservation: Reservation,
        noise_key: [u8; 32],
        adv_secret: &[u8; 32],
        now: u64,
    ) -> Result<Jid, SimError> {
        let inner = &self.inner;
        let pending = reservation.pending;
        let companion_identity = pending.bundle.identity;
        let details = AdvDeviceIdentity {
            raw_id: Some(reservation.raw_id),
            timestamp: Some(now),
            key_index: Some(reservation.key_index),
            account_type: None,
            device_type: None,
        }
        .encode_to_vec();
        let phone_identity = &reservation.account_identity;
        let account_signature = inner.with_rng(|rng| {
            phone_identity.sign(
                &account_signature_message(&details, &companion_identity, false),
                rng,
            )
        });
        let signed = AdvSignedDeviceIdentity {
            details: Some(details.clone()),
            account_signature_key: Some(phone_identity.public.to_vec()),
            account_signature: Some(account_signature.to_vec()),
            device_signature: None,
        }
        .encode_to_vec();
        let container = AdvSignedDeviceIdentityHmac {
            hmac: Some(details_hmac(adv_secret, &signed, false).to_vec()),
            details: Some(signed),
            account_type: None,
        }
        .encode_to_vec();
        let jid = reservation.jid;
        let lid = inner
            .registry
            .lid_of(&jid.user)
            .map(|lid| Jid::with_device(lid, jid.device, crate::wa::jid::LID_SERVER));
        let iq = stanza::pair_success(
            &inner.new_iq_id(),
            now,
            reservation.key_index,
            container,
            &jid,
            lid.as_ref(),
        );

        let (reply_tx, reply_rx) = oneshot::channel();
        let sent = pending
            .commands
            .send(Command::PairSuccess {
                iq,
                reply: reply_tx,
            })
            .await;
        if sent.is_err() {
            return Err(SimError::CompanionGone);
        }
        let reply = match tokio::time::timeout(PAIR_TIMEOUT, reply_rx).await {
            Err(_) => Err(SimError::PairTimeout(PAIR_TIMEOUT)),
            Ok(Err(_)) => Err(SimError::CompanionGone),
            Ok(Ok(Err(PairRefusal { code, text }))) => Err(SimError::PairRefused { code, text }),
            Ok(Ok(Ok(node))) => Ok(node),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                inner.registry.restore_pending(noise_key, pending);
                return Err(err);
            }
        };
        let expected = stanza::PairExpectation {
            details: &details,
            key_index: reservation.key_index,
            companion_identity: &companion_identity,
            account_signature_key: &phone_identity.public,
        };
        let signed_identity = match stanza::check_pair_sign(&reply, &expected) {
            Ok(bytes) => bytes,
            Err(err) => {
                // The companion believes it is paired; it is not.
                let _ = pending
                    .commands
                    .send(Command::Terminate(Termination::DeviceRemoved))
                    .await;
                return Err(SimError::InvalidPairConfirmation(err.to_string()));
            }
        };
        let device = Device {
            id: jid.device,
            noise_key,
            bundle: pending.bundle.clone(),
            platform: pending.platform.clone(),
            key_index: reservation.key_index,
            signed_identity,
            prekeys: Default::default(),
        };
        inner.registry.add_device(device, &jid);
        debug!(%jid, "companion paired");
        // Queued before the companion reconnects: it finds them at login.
        if let Err(err) = inner.welcome_companion(&jid, pending.full_sync).await {
            warn!(%jid, %err, "phone could not greet its new companion");
        }
        // Paired: the companion must reconnect and log in.
        let _ = pending
            .commands
            .send(Command::Terminate(Termination::StreamError(515)))
            .await;
        Ok(jid)
    }

    /// Creates an account whose virtual phone (device 0) has fresh Signal
    /// keys. Returns the account JID.
    pub fn create_account(&self, phone: &PhoneNumber, push_name: &str) -> Result<Jid, SimError> {
        let keys = self.inner.with_rng(NewAccount::generate);
        if self
            .inner
            .registry
            .create_account(phone, push_name, unix_now(), keys)
        {
            Ok(phone.to_jid())
        } else {
            Err(SimError::AccountExists(phone.to_string()))
        }
    }

    /// Gives the account of `phone` one more device, a companion with its
    /// own Signal keys that never connects (see
    /// `Registry::add_virtual_device`). Returns its JID.
    pub fn add_virtual_device(&self, phone: &PhoneNumber) -> Result<Jid, SimError> {
        let (noise_key, bundle, prekeys) = self.inner.with_rng(|rng| {
            let identity = KeyPair::generate(rng);
            let signed = signal::SignedPreKey::generate(1, &identity, rng)
                .map_err(|err| SimError::Encryption(err.to_string()))?;
            let mut noise_key = [0u8; 32];
            rng.fill_bytes(&mut noise_key);
            let prekeys: BTreeMap<u32, [u8; 32]> = (1..=VIRTUAL_DEVICE_PREKEYS)
                .map(|id| (id, KeyPair::generate(rng).public))
                .collect();
            let bundle = CompanionBundle {
                registration_id: signal::generate_registration_id(rng),
                identity: identity.public,
                signed_prekey: SignedPreKey {
                    id: signed.id,
                    public: signed.key.public,
                    signature: signed.signature,
                },
            };
            Ok::<_, SimError>((noise_key, bundle, prekeys))
        })?;
        self.inner
            .registry
            .add_virtual_device(phone.as_str(), noise_key, bundle, prekeys)
            .ok_or_else(|| SimError::NotFound(format!("no account {phone}")))
    }

    /// The virtual phone of `from` sends a text to the account `to` (every
    /// device of it, and a sent copy to `from`'s companions). Returns the
    /// message id.
    pub async fn send_text(
        &self,
        from: &PhoneNumber,
        to: &Jid,
        text: &str,
    ) -> Result<String, SimError> {
        self.inner.phone_send(from.as_str(), &to.user, text).await
    }

    /// Like [`Simulator::send_text`], delivered from the sender's LID (see
    /// [`Simulator::lid_of`]) with its number in `sender_pn`: how the
    /// server addresses an account that moved to LID addressing.
    pub async fn send_text_from_lid(
        &self,
        from: &PhoneNumber,
        to: &Jid,
        text: &str,
    ) -> Result<String, SimError> {
        let to = self.inner.phone_jid(to);
        self.inner
            .phone_send_from_lid(from.as_str(), &to.user, text)
            .await
    }

    /// Keeps the LID of `phone`'s account from others until the account
    /// sends from it (see [`Simulator::send_text_from_lid`]).
    pub fn hide_lid(&self, phone: &PhoneNumber) -> Result<(), SimError> {
        if self.inner.registry.set_lid_hidden(phone.as_str(), true) {
            Ok(())
        } else {
            Err(SimError::NotFound(format!("no account {}", phone.as_str())))
        }
    }

    /// The LID of the account with this phone number (`lid@lid`).
    pub fn lid_of(&self, phone: &PhoneNumber) -> Option<Jid> {
        self.inner
            .registry
            .lid_of(phone.as_str())
            .map(|lid| Jid::new(lid, crate::wa::jid::LID_SERVER))
    }

    /// The virtual phone of `from` sends `count` texts `<prefix><n>` (n from
    /// 0) to the account `to`, each through the same path as
    /// [`Simulator::send_text`], at most `per_second` a second when non-zero.
    /// Returns the ids in order once every text is handed to routing.
    pub async fn send_texts(
        &self,
        from: &PhoneNumber,
        to: &Jid,
        count: u32,
        prefix: &str,
        per_second: u32,
    ) -> Result<Vec<String>, SimError> {
        bulk_count(count)?;
        self.inner
            .phone_send_many(from.as_str(), &to.user, count, prefix, per_second)
            .await
    }

    /// The virtual phone of `from` sends a file to the account `to`, as
    /// [`Simulator::send_text`] sends a text: encrypted, stored on the media
    /// host, announced in a media message. Returns the message id and the
    /// media it described (media key included).
    pub async fn send_media(
        &self,
        from: &PhoneNumber,
        to: &Jid,
        media: MediaSend,
    ) -> Result<(String, crate::wa::media::MediaInfo), SimError> {
        self.inner
            .phone_send_media(from.as_str(), &to.user, media)
            .await
    }

    /// The virtual phone of `from` sends a location, contact cards, a poll
    /// or a vote on a poll it knows to the account `to`, as
    /// [`Simulator::send_text`] sends a text. Returns the message id.
    pub async fn send_content(
        &self,
        from: &PhoneNumber,
        to: &Jid,
        content: PhoneContent,
    ) -> Result<String, SimError> {
        self.inner
            .phone_send_content(from.as_str(), &to.user, content)
            .await
    }

    /// The texts a virtual phone received and decrypted, oldest first.
    pub fn inbox(&self, phone: &PhoneNumber) -> Result<Vec<InboxMessage>, SimError> {
        self.inner
            .registry
            .with_handset(phone.as_str(), |handset| handset.inbox().cloned().collect())
            .ok_or_else(|| SimError::NotFound(format!("no account {}", phone.as_str())))
    }

    /// The virtual phone of `phone` creates a group with `subject` and the
    /// given accounts (unknown numbers are left out); every member device
    /// is notified. Returns the group JID.
    pub async fn create_group(
        &self,
        phone: &PhoneNumber,
        subject: &str,
        participants: &[Jid],
    ) -> Result<Jid, SimError> {
        self.create_group_addressed(phone, subject, participants, false)
            .await
    }

    /// Like [`Simulator::create_group`]; with `by_lid` the group names its
    /// members by LID (`addressing_mode="lid"`): its metadata lists each
    /// member's LID with `phone_number`, and its messages, receipts and
    /// notifications name the author by LID with `participant_pn`.
    /// Participants may be given by phone number or LID.
    pub async fn create_group_addressed(
        &self,
        phone: &PhoneNumber,
        subject: &str,
        participants: &[Jid],
        by_lid: bool,
    ) -> Result<Jid, SimError> {
        let query = groups::GroupQuery::Create {
            subject: subject.to_owned(),
            key: None,
            participants: participants
                .iter()
                .map(|p| self.inner.phone_jid(p).user)
                .collect(),
        };
        let outcome = self.group_query_quiet(phone, None, query)?;
        let id = outcome
            .group
            .clone()
            .ok_or(SimError::Group(GroupError::NotFound))?;
        if by_lid {
            self.inner.groups.address_by_lid(&id);
        }
        self.inner.deliver_notices(outcome.notices).await;
        Ok(Jid::new(id, crate::wa::jid::GROUP_SERVER))
    }

    /// The virtual phone of `phone` (an admin) adds, removes, promotes or
    /// demotes members. Returns each participant's result: its account JID
    /// and 0, or the error code WhatsApp gives (404 no account or not a
    /// member, 409 already a member, 406 the creator).
    pub async fn update_group_participants(
        &self,
        phone: &PhoneNumber,
        group: &Jid,
        action: GroupAction,
        participants: &[Jid],
    ) -> Result<Vec<(Jid, u16)>, SimError> {
        let query = groups::GroupQuery::Change {
            action,
            participants: participants.iter().map(|p| p.user.clone()).collect(),
        };
        let outcome = self.group_query(phone, Some(group), query).await?;
        Ok(outcome
            .results
            .into_iter()
            .map(|(user, code)| (Jid::new(user, DEFAULT_USER_SERVER), code))
            .collect())
    }

    /// The virtual phone of `phone` leaves a group.
    pub async fn leave_group(&self, phone: &PhoneNumber, group: &Jid) -> Result<(), SimError> {
        self.inner
            .groups
            .check_sender(&group.user, phone.as_str())
            .map_err(SimError::Group)?;
        let query = groups::GroupQuery::Leave {
            groups: vec![group.user.clone()],
        };
        self.group_query(phone, None, query).await.map(|_| ())
    }

    /// The group's invite code as the admin `phone` gets it; `revoke`
    /// replaces it with a new one first.
    pub async fn group_invite_code(
        &self,
        phone: &PhoneNumber,
        group: &Jid,
        revoke: bool,
    ) -> Result<String, SimError> {
        let outcome = self
            .group_query(phone, Some(group), groups::GroupQuery::Invite { revoke })
            .await?;
        outcome
            .reply
            .first()
            .and_then(|invite| invite.attr_string("code"))
            .ok_or(SimError::Group(GroupError::NotFound))
    }

    /// The virtual phone of `phone` sends a text to a group it is in.
    pub async fn send_group_text(
        &self,
        phone: &PhoneNumber,
        group: &Jid,
        text: &str,
    ) -> Result<String, SimError> {
        self.inner
            .phone_send_group(phone.as_str(), &group.user, text)
            .await
    }

    /// The virtual phone of `phone` sends `count` texts `<prefix><n>` (n
    /// from 0) to a group it is in, each as [`Simulator::send_group_text`]
    /// sends one. Returns the ids in order.
    pub async fn send_group_texts(
        &self,
        phone: &PhoneNumber,
        group: &Jid,
        count: u32,
        prefix: &str,
    ) -> Result<Vec<String>, SimError> {
        bulk_count(count)?;
        let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for n in 0..count {
            ids.push(
                self.inner
                    .phone_send_group(phone.as_str(), &group.user, &format!("{prefix}{n}"))
                    .await?,
            );
        }
        Ok(ids)
    }

    /// The groups `phone` is in, or every group with `None`.
    pub fn groups(&self, phone: Option<&PhoneNumber>) -> Vec<GroupInfo> {
        self.inner
            .groups
            .list(phone.map(PhoneNumber::as_str))
            .iter()
            .map(GroupInfo::from)
            .collect()
    }

    /// One group as the server keeps it.
    pub fn group_info(&self, group: &Jid) -> Result<GroupInfo, SimError> {
        self.inner
            .groups
            .get(&group.user)
            .filter(|_| group.is_group())
            .map(|g| GroupInfo::from(&g))
            .ok_or(SimError::Group(GroupError::NotFound))
    }

    /// Encoded size (binary nodes, before the frame cipher) of the last
    /// message a device sent to the group; 0 before any.
    pub fn group_message_bytes(&self, group: &Jid) -> u64 {
        self.inner.registry.group_message_bytes(&group.user)
    }

    async fn group_query(
        &self,
        phone: &PhoneNumber,
        group: Option<&Jid>,
        query: groups::GroupQuery,
    ) -> Result<groups::Outcome, SimError> {
        let outcome = self.group_query_quiet(phone, group, query)?;
        self.inner.deliver_notices(outcome.notices.clone()).await;
        Ok(outcome)
    }

    /// Runs a group query; its notifications are the caller's to deliver.
    fn group_query_quiet(
        &self,
        phone: &PhoneNumber,
        group: Option<&Jid>,
        query: groups::GroupQuery,
    ) -> Result<groups::Outcome, SimError> {
        if let Some(group) = group.filter(|g| !g.is_group()) {
            return Err(SimError::InvalidJid(format!("{group} is not a group JID")));
        }
        if self.inner.registry.user_devices(phone.as_str()).is_empty() {
            return Err(SimError::NotFound(format!("no account {}", phone.as_str())));
        }
        let outcome = self
            .inner
            .group_query(&phone.to_jid(), group.map(|g| g.user.as_str()), query)
            .map_err(SimError::Group)?;
        Ok(outcome)
    }

    /// Every account with its devices.
    pub fn accounts(&self) -> Vec<AccountInfo> {
        self.inner.registry.accounts()
    }

    /// Up to `limit` accounts in phone-number order after the number
    /// `after` (from the first with `None`).
    pub fn accounts_page(&self, after: Option<&PhoneNumber>, limit: usize) -> Vec<AccountInfo> {
        self.inner
            .registry
            .accounts_page(after.map(PhoneNumber::as_str), limit)
    }

    /// Whether the JID names a known account (device 0) or companion device.
    pub fn knows(&self, jid: &Jid) -> bool {
        self.inner.registry.knows(jid)
    }

    /// Ends the live connections of a device (or of every device of an
    /// account when `jid` has device 0) with `<stream:error code=CODE/>`, or
    /// drops them silently when `code` is 0. Returns how many were ended.
    pub async fn kick(&self, jid: &Jid, code: u32) -> usize {
        self.terminate(jid, Termination::StreamError(code)).await
    }

    /// Tells the live connections of a device (or account) that another
    /// connection replaced them.
    pub async fn replace(&self, jid: &Jid) -> usize {
        self.terminate(jid, Termination::Replaced).await
    }

    /// Unlinks a companion device: its live connections are told it was
    /// removed, and later logins are refused.
    pub async fn remove_device(&self, jid: &Jid) -> Result<usize, SimError> {
        let connections = self.inner.registry.connections_of(jid);
        if !self.inner.registry.remove_device(jid) {
            return Err(SimError::NotFound(format!("no companion device {jid}")));
        }
        Ok(send_all(connections, Termination::DeviceRemoved).await)
    }

    /// Delays every frame sent to a device (`Some`) or to every connection
    /// (`None`) by `delay_ms`; 0 removes the delay.
    pub fn set_delay(&self, jid: Option<&Jid>, delay_ms: u32) {
        self.inner.registry.set_delay(jid, delay_ms);
    }

    /// Sends a stanza to every live connection of a device (the outbound
    /// path message routing builds on). Returns how many received it.
    pub async fn deliver(&self, jid: &Jid, node: crate::wa::binary::Node) -> usize {
        let node = Arc::new(node);
        let mut delivered = 0;
        for conn in self.inner.registry.connections_of(jid) {
            if conn.send(Command::Deliver(Arc::clone(&node))).await.is_ok() {
                delivered += 1;
            }
        }
        delivered
    }

    /// Stops accepting, closes every connection and waits for them to end.
    pub async fn shutdown(&self) {
        // Nobody listening only means every task already ended.
        let _ = self.inner.shutdown.send(true);
        let listeners = std::mem::take(&mut *lock(&self.inner.listeners));
        for (_, task) in listeners {
            if let Err(err) = task.await {
                warn!(%err, "simulator accept loop failed");
            }
        }
        self.inner.media.stopped().await;
        let saver = lock(&self.inner.save_task).take();
        if let Some(saver) = saver {
            if let Err(err) = saver.await {
                warn!(%err, "simulator state saver failed");
            }
        }
        // Every connection has ended: this is the final state.
        if let Err(err) = snapshot::save(&self.inner).await {
            warn!(%err, "simulator state not saved at shutdown");
        }
    }

    async fn terminate(&self, jid: &Jid, how: Termination) -> usize {
        send_all(self.inner.registry.connections_of(jid), how).await
    }
}

async fn send_all(connections: Vec<mpsc::Sender<Command>>, how: Termination) -> usize {
    let mut ended = 0;
    for conn in connections {
        if conn.send(Command::Terminate(how)).await.is_ok() {
            ended += 1;
        }
    }
    ended
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Small stanzas must not wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(conn::serve(Arc::clone(&inner), tcp, peer, shutdown.clone()));
                }
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
