//! The simulator's shared state: accounts with their virtual phone and
//! companion devices, companions waiting to be paired, the live connections
//! with the command channel that reaches each of them, per-device queues of
//! unacknowledged stanzas, and the message ids each device sent recently.
//!
//! Locks are split so that a delivery touches only what it needs, in O(1):
//! accounts sit in a read-mostly directory and each has its own locks (its
//! devices, its virtual phone's Signal state); per-device delivery state
//! (queue, live connections, accepted ids) sits in `mailbox`, sharded by
//! device JID; connections by id and pending pairings are touched only when
//! a connection opens, logs in or ends. No lock is held across an `.await`
//! or while encoding or doing I/O; the only crypto under a lock is a phone's
//! own, under that phone's lock. Locks never nest: each call copies out what
//! it needs (an account's `Arc`, a connection's sender) and lets go before
//! taking the next. No I/O here; imports `wa` only.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::{mpsc, oneshot};

use rand::{CryptoRng, RngCore};

use super::mailbox::Mailboxes;
pub(crate) use super::mailbox::{Acceptance, QueueClass};
use super::phone::Phone;
use super::snapshot::{
    key32, key_pair, InvalidState, SavedAccount, SavedDevice, SavedMailbox, SavedPreKey,
    SavedSignedPreKey,
};
use super::usync::BundleKeys;
use crate::wa::binary::Node;
use crate::wa::crypto::KeyPair;
use crate::wa::jid::{Jid, PhoneNumber, DEFAULT_USER_SERVER};

/// Most one-time prekeys kept per device.
const MAX_STORED_PREKEYS: usize = 10_000;
/// Identifies one websocket connection for the lifetime of the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(pub(crate) u64);

/// The keys a companion registers with (its initial Signal bundle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompanionBundle {
    pub(crate) registration_id: u32,
    pub(crate) identity: [u8; 32],
    pub(crate) signed_prekey: SignedPreKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SignedPreKey {
    pub(crate) id: u32,
    pub(crate) public: [u8; 32],
    pub(crate) signature: [u8; 64],
}

/// An account: a phone number with its virtual phone (device 0) and the
/// companions linked to it. What never changes is read without a lock.
pub(crate) struct Account {
    pub(crate) phone: PhoneNumber,
    /// The account's LID user (digits; `…@lid`), fixed for its lifetime.
    pub(crate) lid: String,
    /// The LID is not revealed to others (see [`Registry::revealed_lid_of`]).
    lid_hidden: AtomicBool,
    pub(crate) push_name: String,
    /// The phone's identity key: it signs the companions' device identities.
    pub(crate) identity: KeyPair,
    /// `ADVDeviceIdentity.raw_id`, fixed per account.
    pub(crate) raw_id: u32,
    pub(crate) created: u64,
    /// Device 0: the virtual phone with its Signal state and inbox. Locked
    /// on its own so that one phone's crypto never holds up another account.
    handset: Mutex<Phone>,
    devices: Mutex<Devices>,
    /// The generated history its phone sends new companions, if seeded
    /// (kept in memory only).
    history_seed: Mutex<Option<super::phone_history::HistorySeed>>,
}

/// The companions of an account and the ids the next one gets.
struct Devices {
    next_device: u16,
    next_key_index: u32,
    by_id: BTreeMap<u16, Device>,
}

/// A paired companion device.
pub(crate) struct Device {
    pub(crate) id: u16,
    /// The Noise static key bound at pairing: logins must present it.
    pub(crate) noise_key: [u8; 32],
    pub(crate) bundle: CompanionBundle,
    pub(crate) platform: String,
    pub(crate) key_index: u32,
    /// `ADVSignedDeviceIdentity` as the companion signed it (without the
    /// account signature key).
    #[allow(dead_code)] // kept for device-identity checks of routed messages
    pub(crate) signed_identity: Vec<u8>,
    /// One-time prekeys uploaded by the companion, by id.
    pub(crate) prekeys: BTreeMap<u32, [u8; 32]>,
}

/// A registration connection that asked for a QR code and was given refs.
pub(crate) struct Pending {
    pub(crate) conn: ConnId,
    pub(crate) refs: Vec<String>,
    pub(crate) bundle: CompanionBundle,
    pub(crate) platform: String,
    /// The companion asked for the whole history (`requireFullSync`).
    pub(crate) full_sync: bool,
    pub(crate) commands: mpsc::Sender<Command>,
    /// The link code the companion asked for (`companion_hello`), if any.
    pub(crate) link_code: Option<PendingLinkCode>,
}

/// A companion's `companion_hello`: what the phone of `phone` unwraps with
/// the code typed on it.
#[derive(Clone)]
pub(crate) struct PendingLinkCode {
    pub(crate) phone: PhoneNumber,
    /// The companion's ephemeral key wrapped under the code.
    pub(crate) wrapped_ephemeral: Vec<u8>,
    /// The ref the server answered with.
    pub(crate) reference: Vec<u8>,
    /// Unix milliseconds after which the code is refused.
    pub(crate) expires_at_ms: u64,
}

/// What a connection is, once its ClientPayload was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// A new companion waiting to be paired, by its Noise static key.
    Registration([u8; 32]),
    /// A logged-in companion.
    Device(Jid),
}

/// A live connection as the control side sees it.
struct Live {
    kind: ConnKind,
    /// Milliseconds by which the connection's writer delays every frame.
    delay: Arc<AtomicU32>,
}

/// How a connection is ended on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Termination {
    /// `<stream:error code=N/>`, or a silent socket drop for code 0.
    StreamError(u32),
    /// `<stream:error><conflict type="replaced"/></stream:error>`.
    Replaced,
    /// `<stream:error code="401"><conflict type="device_removed"/></stream:error>`.
    DeviceRemoved,
    /// The simulator stops: close the socket without a stanza.
    Shutdown,
}

/// The companion's answer to pair-success: the `<pair-device-sign>` result
/// iq, or the error it replied with.
pub(crate) type PairReply = Result<Node, PairRefusal>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PairRefusal {
    pub(crate) code: String,
    pub(crate) text: String,
}

/// Commands from the control side to a connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send this pair-success iq (its id is the node's) and report the
    /// companion's answer.
    PairSuccess {
        iq: Node,
        reply: oneshot::Sender<PairReply>,
    },
    /// Send the phone's link-code notification and hand the companion's
    /// `companion_finish` iq to `finish` (the caller answers it).
    LinkCodeNotify {
        notification: Node,
        finish: oneshot::Sender<Node>,
    },
    /// Send a stanza as is (the outbound path of message routing); shared
    /// with the device's queue, so delivering copies nothing.
    Deliver(Arc<Node>),
    /// End the connection.
    Terminate(Termination),
}

/// Result of checking a login against the registry.
#[derive(Debug)]
pub(crate) enum LoginCheck {
    Accepted {
        created: u64,
        /// Other live connections of the same device, to be replaced.
        replaced: Vec<mpsc::Sender<Command>>,
    },
    Refused(&'static str),
}

/// The pair-success material prepared for one scan.
pub(crate) struct Reservation {
    pub(crate) jid: Jid,
    pub(crate) key_index: u32,
    pub(crate) account_identity: KeyPair,
    pub(crate) raw_id: u32,
    pub(crate) pending: Pending,
}

/// Keys and state for an account that may be created by a call.
pub(crate) struct NewAccount {
    pub(crate) identity: KeyPair,
    pub(crate) raw_id: u32,
    pub(crate) handset: Phone,
}

impl NewAccount {
    pub(crate) fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let identity = KeyPair::generate(rng);
        let raw_id = rng.next_u32();
        let handset = Phone::generate(identity.clone(), rng);
        Self {
            identity,
            raw_id,
            handset,
        }
    }
}

/// Connections by id and pairings in progress: touched when a connection
/// opens, logs in or ends, and by control calls, never per stanza.
#[derive(Default)]
struct Conns {
    live: HashMap<ConnId, Live>,
    pending: HashMap<[u8; 32], Pending>,
    global_delay_ms: u32,
    device_delay_ms: HashMap<Jid, u32>,
}

impl Conns {
    fn delay_for(&self, kind: &ConnKind) -> u32 {
        match kind {
            ConnKind::Device(jid) => self
                .device_delay_ms
                .get(jid)
                .copied()
                .unwrap_or(self.global_delay_ms),
            ConnKind::Registration(_) => self.global_delay_ms,
        }
    }
}

/// Snapshot of one account for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountInfo {
    pub phone: PhoneNumber,
    /// `phone@s.whatsapp.net`.
    pub jid: Jid,
    /// `lid@lid`.
    pub lid: Jid,
    pub push_name: String,
    /// The virtual phone (device 0) first, then companions by device id.
    pub devices: Vec<DeviceInfo>,
}

/// Snapshot of one device for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub jid: Jid,
    /// Platform reported by the companion; empty for the phone.
    pub platform: String,
    /// Whether a logged-in connection is live; the virtual phone is always online.
    pub connected: bool,
    /// `ADVDeviceIdentity.key_index` the phone gave the device; 0 for the phone.
    pub key_index: u32,
    /// One-time prekeys the server holds for the device; 0 for the phone.
    pub prekeys: usize,
    /// Group messages the server accepted with a pairwise `<enc>` for this
    /// device: how senders hand over their sender keys, so a test can tell
    /// whether a key was distributed again.
    pub group_key_distributions: u32,
}

pub(crate) struct Registry {
    /// Accounts by phone number, sorted for paged listings.
    accounts: RwLock<BTreeMap<String, Arc<Account>>>,
    /// Phone numbers by LID user: every account's, never removed.
    lids: RwLock<HashMap<String, String>>,
    /// Per-device delivery state, sharded by device JID.
    mailboxes: Mailboxes,
    conns: Mutex<Conns>,
    next_conn: AtomicU64,
    /// Pairwise `<enc>`s in accepted group messages, by (user, device).
    key_distributions: Mutex<HashMap<(String, u16), u32>>,
    /// Encoded size of the last message sent to each group, by group id.
    group_message_bytes: Mutex<HashMap<String, u64>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            accounts: RwLock::default(),
            lids: RwLock::default(),
            mailboxes: Mailboxes::default(),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(1),
            key_distributions: Mutex::default(),
            group_message_bytes: Mutex::default(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain maps behind, which are
    // still consistent enough to serve; recover rather than cascade.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    fn directory(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Account>>> {
        self.accounts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn directory_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Account>>> {
        self.accounts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn account(&self, user: &str) -> Option<Arc<Account>> {
        self.directory().get(user).cloned()
    }

    fn index_lid(&self, account: &Account) {
        self.lids
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(account.lid.clone(), account.phone.as_str().to_owned());
    }

    /// The LID user of the account with phone number `user`.
    pub(crate) fn lid_of(&self, user: &str) -> Option<String> {
        self.account(user).map(|account| account.lid.clone())
    }

    /// The LID user of `user`'s account as others may learn it: `None`
    /// while the account keeps it hidden (not moved to LID addressing).
    pub(crate) fn revealed_lid_of(&self, user: &str) -> Option<String> {
        let account = self.account(user)?;
        (!account.lid_hidden.load(Ordering::Relaxed)).then(|| account.lid.clone())
    }

    /// Hides or reveals the LID of `user`'s account; false for no account.
    pub(crate) fn set_lid_hidden(&self, user: &str, hidden: bool) -> bool {
        match self.account(user) {
            Some(account) => {
                account.lid_hidden.store(hidden, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The phone number of the account with LID user `lid`.
    pub(crate) fn phone_of_lid(&self, lid: &str) -> Option<String> {
        self.lids
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(lid)
            .cloned()
    }

    /// Registers a new connection (kind decided later) and returns its id
    /// and the delay cell its writer reads.
    pub(crate) fn open_connection(&self) -> (ConnId, Arc<AtomicU32>) {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let ms = lock(&self.conns).global_delay_ms;
        (id, Arc::new(AtomicU32::new(ms)))
    }

    /// Makes a registration connection reachable from the control side.
    pub(crate) fn attach(
        &self,
        id: ConnId,
        kind: ConnKind,
        commands: mpsc::Sender<Command>,
        delay: Arc<AtomicU32>,
    ) {
        if let ConnKind::Device(jid) = &kind {
            self.mailboxes.add_conn(jid, id, commands);
        }
        let mut conns = lock(&self.conns);
        delay.store(conns.delay_for(&kind), Ordering::Relaxed);
        conns.live.insert(id, Live { kind, delay });
    }

    /// Forgets a connection that ended (and its pending pairing, if any).
    pub(crate) fn close_connection(&self, id: ConnId) {
        let live = {
            let mut conns = lock(&self.conns);
            let live = conns.live.remove(&id);
            if let Some(Live {
                kind: ConnKind::Registration(noise),
                ..
            }) = &live
            {
                if conns.pending.get(noise).is_some_and(|p| p.conn == id) {
                    conns.pending.remove(noise);
                }
            }
            live
        };
        if let Some(Live {
            kind: ConnKind::Device(jid),
            ..
        }) = live
        {
            self.mailboxes.remove_conn(&jid, id);
        }
    }

    /// Records that a registration connection was given these refs; a newer
    /// registration with the same noise key replaces an older one.
    pub(crate) fn add_pending(&self, noise_key: [u8; 32], pending: Pending) {
        lock(&self.conns).pending.insert(noise_key, pending);
    }

    /// Takes the pending pairing for a QR code's noise key and reserves the
    /// next device of the account (created from `new_account`, the phone's
    /// identity key and raw id, if new). The pending entry is
    /// removed so that one QR code cannot be scanned twice at once; it is put
    /// back with [`Registry::restore_pending`] if pairing fails.
    pub(crate) fn reserve_device(
        &self,
        phone: &PhoneNumber,
        push_name: &str,
        noise_key: &[u8; 32],
        reference: &str,
        now: u64,
        new_account: NewAccount,
    ) -> Result<Reservation, ReserveError> {
        let pending = {
            let mut conns = lock(&self.conns);
            let pending = conns
                .pending
                .get(noise_key)
                .ok_or(ReserveError::NoPending)?;
            if !pending.refs.iter().any(|r| r == reference) {
                return Err(ReserveError::UnknownRef);
            }
            conns
                .pending
                .remove(noise_key)
                .ok_or(ReserveError::NoPending)?
        };
        self.reserve_for(pending, noise_key, phone, push_name, now, new_account)
    }

    /// Reserves the next device of the account of `phone` for a pending
    /// pairing already taken; on failure the pending pairing is put back.
    pub(crate) fn reserve_for(
        &self,
        pending: Pending,
        noise_key: &[u8; 32],
        phone: &PhoneNumber,
        push_name: &str,
        now: u64,
        new_account: NewAccount,
    ) -> Result<Reservation, ReserveError> {
        let account = Arc::clone(
            self.directory_mut()
                .entry(phone.as_str().to_owned())
                .or_insert_with(|| Arc::new(Account::new(phone, push_name, now, new_account))),
        );
        self.index_lid(&account);
        let reserved = {
            let mut devices = lock(&account.devices);
            let device = devices.next_device;
            device.checked_add(1).map(|next| {
                devices.next_device = next;
                let key_index = devices.next_key_index;
                devices.next_key_index = key_index.saturating_add(1);
                (device, key_index)
            })
        };
        let Some((device, key_index)) = reserved else {
            lock(&self.conns).pending.insert(*noise_key, pending);
            return Err(ReserveError::DevicesExhausted);
        };
        Ok(Reservation {
            jid: Jid::with_device(phone.as_str(), device, DEFAULT_USER_SERVER),
            key_index,
            account_identity: account.identity.clone(),
            raw_id: account.raw_id,
            pending,
        })
    }

    /// Records a registration's link-code request; false if the
    /// connection no longer waits to be paired.
    pub(crate) fn set_link_code(
        &self,
        noise_key: &[u8; 32],
        conn: ConnId,
        code: PendingLinkCode,
    ) -> bool {
        let mut conns = lock(&self.conns);
        match conns.pending.get_mut(noise_key) {
            Some(pending) if pending.conn == conn => {
                pending.link_code = Some(code);
                true
            }
            _ => false,
        }
    }

    /// Takes the newest link-code request for `phone`, so that one code is
    /// never entered twice at once (put it back with
    /// [`Registry::restore_pending`]).
    pub(crate) fn take_link_code(&self, phone: &PhoneNumber) -> Option<([u8; 32], Pending)> {
        let mut conns = lock(&self.conns);
        let noise_key = conns
            .pending
            .iter()
            .filter_map(|(noise, p)| {
                p.link_code
                    .as_ref()
                    .filter(|c| c.phone == *phone)
                    .map(|c| (c.expires_at_ms, *noise))
            })
            .max()
            .map(|(_, noise)| noise)?;
        conns.pending.remove(&noise_key).map(|p| (noise_key, p))
    }

    /// Puts a pending pairing back after a failed scan, if its connection
    /// is still live and no newer registration took its place.
    pub(crate) fn restore_pending(&self, noise_key: [u8; 32], pending: Pending) {
        let mut conns = lock(&self.conns);
        if conns.live.contains_key(&pending.conn) && !conns.pending.contains_key(&noise_key) {
            conns.pending.insert(noise_key, pending);
        }
    }

    /// Links a companion that never connects to an existing account: it
    /// has keys the server hands out in bundles, and what is sent to it
    /// waits in its (bounded) queue. Load tests use it for accounts with
    /// more than one device. `None` for an unknown account or when its
    /// device ids are used up.
    pub(crate) fn add_virtual_device(
        &self,
        user: &str,
        noise_key: [u8; 32],
        bundle: CompanionBundle,
        prekeys: BTreeMap<u32, [u8; 32]>,
    ) -> Option<Jid> {
        let account = self.account(user)?;
        let mut devices = lock(&account.devices);
        let id = devices.next_device;
        devices.next_device = id.checked_add(1)?;
        let key_index = devices.next_key_index;
        devices.next_key_index = key_index.saturating_add(1);
        devices.by_id.insert(
            id,
            Device {
                id,
                noise_key,
                bundle,
                platform: "virtual".to_owned(),
                key_index,
                signed_identity: Vec::new(),
                prekeys,
            },
        );
        Some(Jid::with_device(user, id, DEFAULT_USER_SERVER))
    }

    /// Adds a paired device to its account.
    pub(crate) fn add_device(&self, device: Device, jid: &Jid) -> bool {
        match self.account(&jid.user) {
            Some(account) => {
                lock(&account.devices).by_id.insert(device.id, device);
                true
            }
            None => false,
        }
    }

    /// Checks a login (username + device + noise key) and, when accepted,
    /// returns the other live connections of that device.
    pub(crate) fn check_login(&self, jid: &Jid, noise_key: &[u8; 32]) -> LoginCheck {
        let Some(account) = self.account(&jid.user) else {
            return LoginCheck::Refused("unknown account");
        };
        {
            let devices = lock(&account.devices);
            let Some(device) = devices.by_id.get(&jid.device) else {
                return LoginCheck::Refused("unknown or removed device");
            };
            if device.noise_key != *noise_key {
                return LoginCheck::Refused("noise key differs from the one bound at pairing");
            }
        }
        let replaced = self.mailboxes.senders(jid);
        LoginCheck::Accepted {
            created: account.created,
            replaced,
        }
    }

    /// Whether the JID names a known account (device 0 / no device) or a
    /// known companion device.
    pub(crate) fn knows(&self, jid: &Jid) -> bool {
        self.account(&jid.user)
            .is_some_and(|a| jid.device == 0 || lock(&a.devices).by_id.contains_key(&jid.device))
    }

    /// Command senders of the live, logged-in connections a JID names: one
    /// device, or every device of an account when the JID has device 0.
    pub(crate) fn connections_of(&self, jid: &Jid) -> Vec<mpsc::Sender<Command>> {
        if jid.device != 0 {
            return self.mailboxes.senders(jid);
        }
        self.user_devices(&jid.user)
            .into_iter()
            .filter(|(device, _)| *device != 0)
            .flat_map(|(device, _)| {
                let device = Jid::with_device(jid.user.clone(), device, DEFAULT_USER_SERVER);
                self.mailboxes.senders(&device)
            })
            .collect()
    }

    /// Removes a companion device; returns whether it existed.
    pub(crate) fn remove_device(&self, jid: &Jid) -> bool {
        if jid.device == 0 {
            return false;
        }
        lock(&self.conns).device_delay_ms.remove(jid);
        self.account(&jid.user)
            .is_some_and(|a| lock(&a.devices).by_id.remove(&jid.device).is_some())
    }

    /// Sets the outgoing delay of one device (0 clears it, so the device
    /// follows the global delay again) or, with `None`, the global delay.
    pub(crate) fn set_delay(&self, jid: Option<&Jid>, ms: u32) {
        let mut conns = lock(&self.conns);
        match jid {
            Some(jid) if ms == 0 => {
                conns.device_delay_ms.remove(jid);
            }
            Some(jid) => {
                conns.device_delay_ms.insert(jid.clone(), ms);
            }
            None => conns.global_delay_ms = ms,
        }
        // A control call, not a per-stanza path: visiting every connection
        // is fine here.
        let conns = &*conns;
        for live in conns.live.values() {
            live.delay
                .store(conns.delay_for(&live.kind), Ordering::Relaxed);
        }
    }

    /// Stores uploaded prekeys and the (possibly new) signed prekey.
    pub(crate) fn store_prekeys(
        &self,
        jid: &Jid,
        keys: &[(u32, [u8; 32])],
        signed: Option<SignedPreKey>,
    ) -> bool {
        let Some(account) = self.account(&jid.user) else {
            return false;
        };
        let mut devices = lock(&account.devices);
        let Some(device) = devices.by_id.get_mut(&jid.device) else {
            return false;
        };
        for (id, key) in keys {
            // Bounded per device; real clients keep well under this.
            if device.prekeys.len() >= MAX_STORED_PREKEYS && !device.prekeys.contains_key(id) {
                break;
            }
            device.prekeys.insert(*id, *key);
        }
        if let Some(signed) = signed {
            device.bundle.signed_prekey = signed;
        }
        true
    }

    /// Runs `f` on a companion device of an account, if both exist.
    fn with_device<T>(&self, jid: &Jid, f: impl FnOnce(&mut Device) -> T) -> Option<T> {
        let account = self.account(&jid.user)?;
        let mut devices = lock(&account.devices);
        devices.by_id.get_mut(&jid.device).map(f)
    }

    /// Number of one-time prekeys stored for a device.
    pub(crate) fn prekey_count(&self, jid: &Jid) -> usize {
        self.with_device(jid, |d| d.prekeys.len()).unwrap_or(0)
    }

    /// The device's bundle and prekey ids, for the prekey digest.
    pub(crate) fn prekey_digest(&self, jid: &Jid) -> Option<(CompanionBundle, Vec<u32>)> {
        self.with_device(jid, |d| {
            (d.bundle.clone(), d.prekeys.keys().copied().collect())
        })
    }

    /// Creates an account with only its virtual phone; false if it exists.
    pub(crate) fn create_account(
        &self,
        phone: &PhoneNumber,
        push_name: &str,
        now: u64,
        keys: NewAccount,
    ) -> bool {
        let mut accounts = self.directory_mut();
        if accounts.contains_key(phone.as_str()) {
            return false;
        }
        let account = Arc::new(Account::new(phone, push_name, now, keys));
        accounts.insert(phone.as_str().to_owned(), Arc::clone(&account));
        drop(accounts);
        self.index_lid(&account);
        true
    }

    /// The devices of an account (device 0 first, with key indexes); empty
    /// for an unknown number.
    pub(crate) fn user_devices(&self, user: &str) -> Vec<(u16, u32)> {
        self.account(user)
            .map(|a| a.device_list())
            .unwrap_or_default()
    }

    /// The account's push name, if the account exists.
    pub(crate) fn push_name(&self, user: &str) -> Option<String> {
        self.account(user).map(|a| a.push_name.clone())
    }

    /// Bundles for the requested devices (one-time prekeys popped), `None`
    /// for unknown devices; the JIDs are echoed as given.
    pub(crate) fn take_bundles(&self, jids: Vec<Jid>) -> Vec<(Jid, Option<BundleKeys>)> {
        jids.into_iter()
            .map(|jid| {
                let bundle = if jid.server == DEFAULT_USER_SERVER {
                    self.take_bundle(&jid)
                } else if jid.is_lid() {
                    // Asked by LID: the account's device, answered under
                    // the JID as asked.
                    let phone = self.phone_of_lid(&jid.user);
                    phone.and_then(|phone| {
                        self.take_bundle(&Jid::with_device(phone, jid.device, DEFAULT_USER_SERVER))
                    })
                } else {
                    None
                };
                (jid, bundle)
            })
            .collect()
    }

    /// A device's bundle, popping one of its one-time prekeys.
    fn take_bundle(&self, jid: &Jid) -> Option<BundleKeys> {
        let account = self.account(&jid.user)?;
        if jid.device == 0 {
            return Some(lock(&account.handset).take_bundle());
        }
        let mut devices = lock(&account.devices);
        let device = devices.by_id.get_mut(&jid.device)?;
        let one_time = device.prekeys.pop_first();
        Some(BundleKeys {
            registration_id: device.bundle.registration_id,
            identity: device.bundle.identity,
            signed_prekey: device.bundle.signed_prekey.clone(),
            one_time,
        })
    }

    /// Runs `f` on an account's virtual phone (under that phone's lock only).
    /// Gives `user`'s phone a generated history; false for an unknown
    /// account.
    pub(crate) fn seed_history(&self, user: &str, seed: super::phone_history::HistorySeed) -> bool {
        let Some(account) = self.account(user) else {
            return false;
        };
        *lock(&account.history_seed) = Some(seed);
        true
    }

    /// The generated history of `user`'s phone, if seeded.
    pub(crate) fn history_seed(&self, user: &str) -> Option<super::phone_history::HistorySeed> {
        self.account(user)
            .and_then(|account| lock(&account.history_seed).clone())
    }

    pub(crate) fn with_handset<T>(&self, user: &str, f: impl FnOnce(&mut Phone) -> T) -> Option<T> {
        let account = self.account(user)?;
        let mut handset = lock(&account.handset);
        Some(f(&mut handset))
    }

    /// Runs `f` on the sender's phone with the bundles (popped) of the given
    /// devices it has no session with yet. `None` if the sender is unknown.
    pub(crate) fn with_handset_and_bundles<T>(
        &self,
        sender: &str,
        targets: &[Jid],
        f: impl FnOnce(&mut Phone, Vec<Option<BundleKeys>>) -> T,
    ) -> Option<T> {
        let account = self.account(sender)?;
        let needs: Vec<bool> = {
            let handset = lock(&account.handset);
            targets
                .iter()
                .map(|t| !handset.has_session(&super::messaging::address(t)))
                .collect()
        };
        // Bundles are taken with the phone unlocked (a target may be another
        // phone, whose lock must not nest in this one). Two sends racing to
        // a new device may both take a bundle; the second finds the session
        // open and leaves its one-time prekey unused, as a real phone would.
        let bundles = targets
            .iter()
            .zip(needs)
            .map(|(t, need)| if need { self.take_bundle(t) } else { None })
            .collect();
        let mut handset = lock(&account.handset);
        Some(f(&mut handset, bundles))
    }

    /// Decides whether a message a device sent is new: the server keeps the
    /// ids it accepted from each device for a while, and a repeated one is
    /// acknowledged again without being routed twice. `key` identifies the
    /// message (see `ClientMessage::acceptance_key`).
    pub(crate) fn accept_message(&self, sender: &Jid, key: &str, now: u64) -> Acceptance {
        self.mailboxes.accept(sender, key, now)
    }

    /// Queues a stanza for a device until it acknowledges it, and returns
    /// the device's live connections to deliver it to now.
    pub(crate) fn enqueue(
        &self,
        device: &Jid,
        class: QueueClass,
        id: &str,
        node: Arc<Node>,
    ) -> Vec<mpsc::Sender<Command>> {
        self.mailboxes.enqueue(device, class, id, node)
    }

    /// The device acknowledged these ids: they leave its queue.
    pub(crate) fn acknowledge(&self, device: &Jid, class: QueueClass, ids: &[String]) {
        self.mailboxes.acknowledge(device, class, ids);
    }

    /// Attaches a logged-in device and returns, in the same step, what is
    /// waiting for it (marked `offline`): later stanzas go out live, so
    /// nothing is both delivered live and replayed.
    pub(crate) fn attach_device(
        &self,
        id: ConnId,
        jid: &Jid,
        commands: mpsc::Sender<Command>,
        delay: Arc<AtomicU32>,
    ) -> Vec<Node> {
        {
            let mut conns = lock(&self.conns);
            let kind = ConnKind::Device(jid.clone());
            delay.store(conns.delay_for(&kind), Ordering::Relaxed);
            conns.live.insert(id, Live { kind, delay });
        }
        self.mailboxes.attach(jid, id, commands)
    }

    /// Every account with its devices and their connection state.
    pub(crate) fn accounts(&self) -> Vec<AccountInfo> {
        self.accounts_page(None, usize::MAX)
    }

    /// Up to `limit` accounts in phone-number order, starting after the
    /// number `after` (from the first when `None`). The directory lock is
    /// held only to copy out the page's accounts.
    pub(crate) fn accounts_page(&self, after: Option<&str>, limit: usize) -> Vec<AccountInfo> {
        let page: Vec<Arc<Account>> = {
            let accounts = self.directory();
            let range = match after {
                Some(after) => accounts.range::<str, _>((Bound::Excluded(after), Bound::Unbounded)),
                None => accounts.range::<str, _>(..),
            };
            range.take(limit).map(|(_, a)| Arc::clone(a)).collect()
        };
        page.iter()
            .map(|account| self.account_info(account))
            .collect()
    }

    /// Counts the devices a group message carried a pairwise `<enc>` for.
    pub(crate) fn note_key_distributions<'a>(&self, devices: impl IntoIterator<Item = &'a Jid>) {
        let mut counts = lock(&self.key_distributions);
        for device in devices {
            *counts
                .entry((device.user.clone(), device.device))
                .or_default() += 1;
        }
    }

    /// Records the size of a message stanza sent to `group`.
    pub(crate) fn note_group_message_bytes(&self, group: &str, bytes: u64) {
        lock(&self.group_message_bytes).insert(group.to_owned(), bytes);
    }

    /// The size of the last message stanza sent to `group`, 0 before any.
    pub(crate) fn group_message_bytes(&self, group: &str) -> u64 {
        lock(&self.group_message_bytes)
            .get(group)
            .copied()
            .unwrap_or(0)
    }

    fn key_distributions(&self, user: &str, device: u16) -> u32 {
        lock(&self.key_distributions)
            .get(&(user.to_owned(), device))
            .copied()
            .unwrap_or(0)
    }

    fn account_info(&self, account: &Account) -> AccountInfo {
        let phone_jid = account.phone.to_jid();
        let phone = DeviceInfo {
            jid: phone_jid.clone(),
            platform: String::new(),
            connected: true,
            key_index: 0,
            prekeys: lock(&account.handset).unclaimed_prekeys(),
            group_key_distributions: self.key_distributions(account.phone.as_str(), 0),
        };
        let companions: Vec<(Jid, String, u32, usize)> = lock(&account.devices)
            .by_id
            .values()
            .map(|d| {
                let jid = Jid::with_device(account.phone.as_str(), d.id, DEFAULT_USER_SERVER);
                (jid, d.platform.clone(), d.key_index, d.prekeys.len())
            })
            .collect();
        let companions = companions
            .into_iter()
            .map(|(jid, platform, key_index, prekeys)| {
                let connected = self.mailboxes.connected(&jid);
                let group_key_distributions = self.key_distributions(&jid.user, jid.device);
                DeviceInfo {
                    jid,
                    platform,
                    connected,
                    key_index,
                    prekeys,
                    group_key_distributions,
                }
            });
        AccountInfo {
            phone: account.phone.clone(),
            jid: phone_jid,
            lid: Jid::new(account.lid.clone(), crate::wa::jid::LID_SERVER),
            push_name: account.push_name.clone(),
            devices: std::iter::once(phone).chain(companions).collect(),
        }
    }
}

impl Registry {
    /// Every account with its phone and devices, as the state file keeps
    /// them. Each account is copied under its own locks, one at a time.
    pub(crate) fn saved_accounts(&self) -> Vec<SavedAccount> {
        let accounts: Vec<Arc<Account>> = self.directory().values().cloned().collect();
        accounts.iter().map(|account| account.saved()).collect()
    }

    /// Every device's queue of unacknowledged stanzas.
    pub(crate) fn saved_mailboxes(&self) -> Vec<SavedMailbox> {
        self.mailboxes.saved()
    }

    /// A registry with the accounts and queues of the state file.
    pub(crate) fn restore(
        accounts: &[SavedAccount],
        mailboxes: &[SavedMailbox],
    ) -> Result<Self, InvalidState> {
        let mut directory = BTreeMap::new();
        let mut lids = HashMap::new();
        for saved in accounts {
            let account = Account::restore(saved)?;
            let phone = account.phone.as_str().to_owned();
            if let Some(other) = lids.insert(account.lid.clone(), phone.clone()) {
                return Err(InvalidState::field(format_args!(
                    "accounts {other} and {phone} share the LID {}",
                    account.lid
                )));
            }
            directory.insert(phone, Arc::new(account));
        }
        Ok(Self {
            accounts: RwLock::new(directory),
            lids: RwLock::new(lids),
            mailboxes: Mailboxes::restore(mailboxes)?,
            ..Self::default()
        })
    }
}

impl Account {
    fn saved(&self) -> SavedAccount {
        let handset = lock(&self.handset).saved();
        let devices = lock(&self.devices);
        SavedAccount {
            phone: self.phone.as_str().to_owned(),
            lid: self.lid.clone(),
            lid_hidden: self.lid_hidden.load(Ordering::Relaxed),
            push_name: self.push_name.clone(),
            identity_private: self.identity.private_bytes().to_vec(),
            raw_id: self.raw_id,
            created: self.created,
            next_device: u32::from(devices.next_device),
            next_key_index: devices.next_key_index,
            devices: devices.by_id.values().map(Device::saved).collect(),
            handset: Some(handset),
        }
    }

    fn restore(saved: &SavedAccount) -> Result<Self, InvalidState> {
        let phone: PhoneNumber = saved
            .phone
            .parse()
            .map_err(|err| InvalidState::field(format_args!("account {:?}: {err}", saved.phone)))?;
        let what = |field: &str| format!("account {phone}: {field}");
        let identity = key_pair(&saved.identity_private, &what("identity key"))?;
        let handset = saved
            .handset
            .as_ref()
            .ok_or_else(|| InvalidState::field(what("no phone state")))?;
        let handset = Phone::restore(identity.clone(), handset)?;
        let by_id = saved
            .devices
            .iter()
            .map(|device| {
                let device = Device::restore(device, &phone)?;
                Ok((device.id, device))
            })
            .collect::<Result<BTreeMap<u16, Device>, InvalidState>>()?;
        let next_device = u16::try_from(saved.next_device)
            .map_err(|_| InvalidState::field(what("next device id out of range")))?;
        if by_id.keys().any(|id| *id == 0 || *id >= next_device) {
            return Err(InvalidState::field(what(
                "device id not below the next one",
            )));
        }
        // Snapshots written before accounts had LIDs get the one the
        // account would have been given.
        let lid = if saved.lid.is_empty() {
            super::lid::new_lid(&phone)
        } else if super::lid::is_lid_user(&saved.lid) {
            saved.lid.clone()
        } else {
            return Err(InvalidState::field(what("LID is not a number")));
        };
        Ok(Self {
            phone,
            lid,
            lid_hidden: AtomicBool::new(saved.lid_hidden),
            push_name: saved.push_name.clone(),
            identity,
            raw_id: saved.raw_id,
            created: saved.created,
            handset: Mutex::new(handset),
            history_seed: Mutex::new(None),
            devices: Mutex::new(Devices {
                next_device,
                next_key_index: saved.next_key_index,
                by_id,
            }),
        })
    }
}

impl Device {
    fn saved(&self) -> SavedDevice {
        SavedDevice {
            id: u32::from(self.id),
            noise_key: self.noise_key.to_vec(),
            registration_id: self.bundle.registration_id,
            identity: self.bundle.identity.to_vec(),
            signed_prekey: Some(SavedSignedPreKey {
                id: self.bundle.signed_prekey.id,
                key: self.bundle.signed_prekey.public.to_vec(),
                signature: self.bundle.signed_prekey.signature.to_vec(),
            }),
            platform: self.platform.clone(),
            key_index: self.key_index,
            signed_identity: self.signed_identity.clone(),
            prekeys: self
                .prekeys
                .iter()
                .map(|(id, key)| SavedPreKey {
                    id: *id,
                    key: key.to_vec(),
                })
                .collect(),
        }
    }

    fn restore(saved: &SavedDevice, phone: &PhoneNumber) -> Result<Self, InvalidState> {
        let what = |field: &str| format!("device {phone}:{}: {field}", saved.id);
        let id =
            u16::try_from(saved.id).map_err(|_| InvalidState::field(what("id out of range")))?;
        let signed = saved
            .signed_prekey
            .as_ref()
            .ok_or_else(|| InvalidState::field(what("no signed prekey")))?;
        let signature: [u8; 64] =
            signed.signature.as_slice().try_into().map_err(|_| {
                InvalidState::field(what("signed prekey signature is not 64 bytes"))
            })?;
        let prekeys = saved
            .prekeys
            .iter()
            .take(MAX_STORED_PREKEYS)
            .map(|key| Ok((key.id, key32(&key.key, &what("prekey"))?)))
            .collect::<Result<BTreeMap<u32, [u8; 32]>, InvalidState>>()?;
        Ok(Self {
            id,
            noise_key: key32(&saved.noise_key, &what("noise key"))?,
            bundle: CompanionBundle {
                registration_id: saved.registration_id,
                identity: key32(&saved.identity, &what("identity key"))?,
                signed_prekey: SignedPreKey {
                    id: signed.id,
                    public: key32(&signed.key, &what("signed prekey"))?,
                    signature,
                },
            },
            platform: saved.platform.clone(),
            key_index: saved.key_index,
            signed_identity: saved.signed_identity.clone(),
            prekeys,
        })
    }
}

impl Account {
    fn new(phone: &PhoneNumber, push_name: &str, now: u64, keys: NewAccount) -> Self {
        Self {
            phone: phone.clone(),
            lid: super::lid::new_lid(phone),
            lid_hidden: AtomicBool::new(false),
            push_name: push_name.to_owned(),
            identity: keys.identity,
            raw_id: keys.raw_id,
            created: now,
            handset: Mutex::new(keys.handset),
            history_seed: Mutex::new(None),
            devices: Mutex::new(Devices {
                next_device: 1,
                next_key_index: 1,
                by_id: BTreeMap::new(),
            }),
        }
    }

    /// Device 0 and every companion with its key index.
    fn device_list(&self) -> Vec<(u16, u32)> {
        let devices = lock(&self.devices);
        std::iter::once((0, 0))
            .chain(devices.by_id.values().map(|d| (d.id, d.key_index)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveError {
    NoPending,
    UnknownRef,
    DevicesExhausted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn bundle() -> CompanionBundle {
        CompanionBundle {
            registration_id: 7,
            identity: [9; 32],
            signed_prekey: SignedPreKey {
                id: 1,
                public: [8; 32],
                signature: [7; 64],
            },
        }
    }

    fn pending(registry: &Registry, noise: [u8; 32]) -> (ConnId, mpsc::Receiver<Command>) {
        let (id, delay) = registry.open_connection();
        let (tx, rx) = mpsc::channel(4);
        registry.attach(id, ConnKind::Registration(noise), tx.clone(), delay);
        registry.add_pending(
            noise,
            Pending {
                conn: id,
                refs: vec!["ref-a".into(), "ref-b".into()],
                bundle: bundle(),
                platform: "CHROME".into(),
                full_sync: false,
                commands: tx,
                link_code: None,
            },
        );
        (id, rx)
    }

    fn phone() -> PhoneNumber {
        "+15551234567".parse().expect("valid phone")
    }

    fn new_account_keys() -> NewAccount {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        NewAccount {
            raw_id: 42,
            ..NewAccount::generate(&mut rng)
        }
    }

    fn device(id: u16, noise: [u8; 32]) -> Device {
        Device {
            id,
            noise_key: noise,
            bundle: bundle(),
            platform: "CHROME".into(),
            key_index: u32::from(id),
            signed_identity: Vec::new(),
            prekeys: BTreeMap::new(),
        }
    }

    #[test]
    fn reserve_checks_noise_key_and_ref() {
        let registry = Registry::default();
        let _conn = pending(&registry, [1; 32]);
        let err = registry.reserve_device(&phone(), "A", &[2; 32], "ref-a", 0, new_account_keys());
        assert_eq!(err.err(), Some(ReserveError::NoPending));
        let err = registry.reserve_device(&phone(), "A", &[1; 32], "ref-z", 0, new_account_keys());
        assert_eq!(err.err(), Some(ReserveError::UnknownRef));
        let first = registry
            .reserve_device(&phone(), "A", &[1; 32], "ref-b", 0, new_account_keys())
            .expect("reserved");
        assert_eq!(first.jid.to_string(), "15551234567:1@s.whatsapp.net");
        assert_eq!(first.key_index, 1);
        assert_eq!(first.raw_id, 42);
        // Taken while pairing: a second scan of the same code finds nothing.
        let again =
            registry.reserve_device(&phone(), "A", &[1; 32], "ref-b", 0, new_account_keys());
        assert_eq!(again.err(), Some(ReserveError::NoPending));
        registry.restore_pending([1; 32], first.pending);
        let second = registry
            .reserve_device(&phone(), "A", &[1; 32], "ref-a", 0, new_account_keys())
            .expect("restored and reserved again");
        assert_eq!(second.jid.device, 2, "device ids are never reused");
        assert_eq!(second.key_index, 2);
    }

    #[test]
    fn closing_a_registration_drops_its_pending_pairing() {
        let registry = Registry::default();
        let (conn, _rx) = pending(&registry, [3; 32]);
        registry.close_connection(conn);
        let err = registry.reserve_device(&phone(), "A", &[3; 32], "ref-a", 0, new_account_keys());
        assert_eq!(err.err(), Some(ReserveError::NoPending));
    }

    #[test]
    fn login_requires_known_device_and_bound_noise_key() {
        let registry = Registry::default();
        let _conn = pending(&registry, [1; 32]);
        let reserved = registry
            .reserve_device(&phone(), "A", &[1; 32], "ref-a", 5, new_account_keys())
            .expect("reserved");
        let jid = reserved.jid.clone();
        assert!(registry.add_device(device(1, [1; 32]), &jid));
        assert!(matches!(
            registry.check_login(&jid, &[1; 32]),
            LoginCheck::Accepted { created: 5, .. }
        ));
        assert!(matches!(
            registry.check_login(&jid, &[2; 32]),
            LoginCheck::Refused("noise key differs from the one bound at pairing")
        ));
        let other = Jid::with_device("15551234567", 9, DEFAULT_USER_SERVER);
        assert!(matches!(
            registry.check_login(&other, &[1; 32]),
            LoginCheck::Refused("unknown or removed device")
        ));
        assert!(registry.remove_device(&jid));
        assert!(matches!(
            registry.check_login(&jid, &[1; 32]),
            LoginCheck::Refused("unknown or removed device")
        ));
    }

    #[test]
    fn connections_delays_and_listing() {
        let registry = Registry::default();
        let _conn = pending(&registry, [1; 32]);
        let reserved = registry
            .reserve_device(&phone(), "Alice", &[1; 32], "ref-a", 0, new_account_keys())
            .expect("reserved");
        let jid = reserved.jid.clone();
        registry.add_device(device(1, [1; 32]), &jid);
        let (id, delay) = registry.open_connection();
        let (tx, _rx) = mpsc::channel(4);
        registry.attach(id, ConnKind::Device(jid.clone()), tx, delay.clone());

        assert_eq!(registry.connections_of(&jid).len(), 1);
        assert_eq!(registry.connections_of(&jid.to_non_ad()).len(), 1);
        let other = Jid::with_device("15551234567", 2, DEFAULT_USER_SERVER);
        assert!(registry.connections_of(&other).is_empty());

        registry.set_delay(None, 30);
        assert_eq!(delay.load(Ordering::Relaxed), 30);
        registry.set_delay(Some(&jid), 70);
        assert_eq!(delay.load(Ordering::Relaxed), 70);
        registry.set_delay(Some(&jid), 0);
        assert_eq!(delay.load(Ordering::Relaxed), 30);

        let accounts = registry.accounts();
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].push_name, "Alice");
        assert_eq!(accounts[0].devices.len(), 2);
        assert_eq!(accounts[0].devices[1].jid, jid);
        assert!(accounts[0].devices[1].connected);
        registry.close_connection(id);
        assert!(!registry.accounts()[0].devices[1].connected);
    }

    #[test]
    fn prekeys_are_stored_per_device() {
        let registry = Registry::default();
        let _conn = pending(&registry, [1; 32]);
        let jid = registry
            .reserve_device(&phone(), "A", &[1; 32], "ref-a", 0, new_account_keys())
            .expect("reserved")
            .jid;
        assert!(!registry.store_prekeys(&jid, &[(1, [0; 32])], None));
        registry.add_device(device(1, [1; 32]), &jid);
        assert!(registry.store_prekeys(&jid, &[(1, [1; 32]), (2, [2; 32])], None));
        assert_eq!(registry.prekey_count(&jid), 2);
        let (_, ids) = registry.prekey_digest(&jid).expect("device known");
        assert_eq!(ids, vec![1, 2]);
    }
    #[test]
    fn repeated_message_ids_are_accepted_once_per_device() {
        let registry = Registry::default();
        let alice = Jid::with_device("111", 1, DEFAULT_USER_SERVER);
        let bob = Jid::with_device("222", 1, DEFAULT_USER_SERVER);
        assert_eq!(registry.accept_message(&alice, "M1", 100), Acceptance::New);
        assert_eq!(
            registry.accept_message(&alice, "M1", 105),
            Acceptance::Repeat { t: 100 },
            "acked again with the first acceptance's time"
        );
        assert_eq!(registry.accept_message(&bob, "M1", 105), Acceptance::New);
        assert_eq!(registry.accept_message(&alice, "M2", 106), Acceptance::New);
        // Forgotten once old enough.
        assert_eq!(
            registry.accept_message(&alice, "M1", 100 + crate::sim::mailbox::ACCEPTED_ID_SECS),
            Acceptance::New
        );
    }

    #[test]
    fn queues_reach_only_the_devices_connections_and_shrink_on_ack() {
        let registry = Registry::default();
        let _conn = pending(&registry, [1; 32]);
        let jid = registry
            .reserve_device(&phone(), "A", &[1; 32], "ref-a", 0, new_account_keys())
            .expect("reserved")
            .jid;
        registry.add_device(device(1, [1; 32]), &jid);
        let other = Jid::with_device("15551234567", 2, DEFAULT_USER_SERVER);
        let node = || Arc::new(Node::new("message"));
        assert!(registry
            .enqueue(&jid, QueueClass::Message, "M0", node())
            .is_empty());

        let (id, delay) = registry.open_connection();
        let (tx, _rx) = mpsc::channel(4);
        let offline = registry.attach_device(id, &jid, tx, delay);
        assert_eq!(offline.len(), 1);
        assert_eq!(offline[0].attr_str("offline"), Some("1"));
        assert_eq!(
            registry
                .enqueue(&jid, QueueClass::Message, "M1", node())
                .len(),
            1
        );
        assert!(registry
            .enqueue(&other, QueueClass::Message, "M1", node())
            .is_empty());
        registry.enqueue(&jid, QueueClass::Receipt, "M1", node());
        registry.acknowledge(&jid, QueueClass::Message, &["M0".into(), "M1".into()]);
        let (again, delay) = registry.open_connection();
        let (tx, _rx2) = mpsc::channel(4);
        let left = registry.attach_device(again, &jid, tx, delay);
        assert_eq!(left.len(), 1, "only the receipt waits: {left:?}");
        assert_eq!(registry.connections_of(&jid).len(), 2);
        registry.close_connection(id);
        registry.close_connection(again);
        assert!(registry.connections_of(&jid).is_empty());
        registry.acknowledge(&jid, QueueClass::Receipt, &["M1".into()]);
        assert!(
            !registry.mailboxes.holds(&jid),
            "an idle mailbox is dropped"
        );
    }

    #[test]
    fn saved_accounts_and_queues_come_back() {
        let registry = Registry::default();
        let _conn = pending(&registry, [1; 32]);
        let jid = registry
            .reserve_device(&phone(), "Alice", &[1; 32], "ref-a", 9, new_account_keys())
            .expect("reserved")
            .jid;
        registry.add_device(device(1, [1; 32]), &jid);
        registry.store_prekeys(&jid, &[(5, [5; 32])], None);
        registry.enqueue(
            &jid,
            QueueClass::Message,
            "M0",
            Arc::new(Node::new("message")),
        );
        let accounts = registry.saved_accounts();
        let mailboxes = registry.saved_mailboxes();

        let again = Registry::restore(&accounts, &mailboxes).expect("restores");
        assert_eq!(again.saved_accounts(), accounts);
        assert_eq!(again.saved_mailboxes(), mailboxes);
        assert!(matches!(
            again.check_login(&jid, &[1; 32]),
            LoginCheck::Accepted { created: 9, .. }
        ));
        assert_eq!(again.prekey_count(&jid), 1);
        assert_eq!(again.accounts()[0].push_name, "Alice");
        let (id, delay) = again.open_connection();
        let (tx, _rx) = mpsc::channel(4);
        assert_eq!(again.attach_device(id, &jid, tx, delay).len(), 1);

        // The LID is kept; a snapshot written before accounts had LIDs
        // gives the account the same LID it was given at creation.
        let lid = registry.lid_of(phone().as_str()).expect("a LID");
        assert_eq!(accounts[0].lid, lid);
        assert_eq!(again.phone_of_lid(&lid).as_deref(), Some(phone().as_str()));
        let mut older = accounts.clone();
        older[0].lid.clear();
        let older = Registry::restore(&older, &mailboxes).expect("restores");
        assert_eq!(older.lid_of(phone().as_str()), Some(lid.clone()));
        assert_eq!(older.accounts()[0].lid.user, lid);

        let mut bad = accounts.clone();
        bad[0].lid = "not a number".into();
        assert!(Registry::restore(&bad, &mailboxes).is_err());
        let mut bad = accounts.clone();
        bad[0].devices[0].noise_key.pop();
        assert!(Registry::restore(&bad, &mailboxes).is_err());
        let mut bad = accounts;
        bad[0].next_device = 1;
        assert!(Registry::restore(&bad, &mailboxes).is_err());
    }

    #[test]
    fn accounts_are_listed_in_pages() {
        let registry = Registry::default();
        for n in 0..5 {
            let phone: PhoneNumber = format!("+1555000000{n}").parse().expect("valid phone");
            assert!(registry.create_account(&phone, "P", 0, new_account_keys()));
        }
        let first = registry.accounts_page(None, 2);
        let users: Vec<&str> = first.iter().map(|a| a.phone.as_str()).collect();
        assert_eq!(users, ["15550000000", "15550000001"]);
        let next = registry.accounts_page(Some("15550000001"), 2);
        let users: Vec<&str> = next.iter().map(|a| a.phone.as_str()).collect();
        assert_eq!(users, ["15550000002", "15550000003"]);
        assert_eq!(registry.accounts_page(Some("15550000004"), 2).len(), 0);
        assert_eq!(registry.accounts().len(), 5);
    }
}
