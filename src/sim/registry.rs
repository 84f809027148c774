//! The simulator's shared state: accounts with their virtual phone and
//! companion devices, companions waiting to be paired, and the live
//! connections with the command channel that reaches each of them.
//!
//! Everything sits behind one `std::sync::Mutex`. Every operation is a short
//! map lookup or insert with no I/O, so a lock is simpler than an actor and
//! never contended for long; the lock is never held across an `.await`
//! (callers copy out what they need, e.g. a connection's sender, then await).
//! No I/O here; imports `wa` only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use rand::{CryptoRng, RngCore};

use super::phone::Phone;
use super::usync::BundleKeys;
use crate::wa::binary::Node;
use crate::wa::crypto::KeyPair;
use crate::wa::jid::{Jid, PhoneNumber, DEFAULT_USER_SERVER};

/// Most one-time prekeys kept per device.
const MAX_STORED_PREKEYS: usize = 10_000;
/// Most unacknowledged stanzas kept per device; the oldest are dropped first
/// (a device that never comes back must not grow the queue forever).
const MAX_QUEUED: usize = 0x1000;

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
/// companions linked to it.
pub(crate) struct Account {
    pub(crate) phone: PhoneNumber,
    pub(crate) push_name: String,
    /// The phone's identity key: it signs the companions' device identities.
    pub(crate) identity: KeyPair,
    /// `ADVDeviceIdentity.raw_id`, fixed per account.
    pub(crate) raw_id: u32,
    pub(crate) created: u64,
    /// Device 0: the virtual phone with its Signal state and inbox.
    pub(crate) handset: Phone,
    next_device: u16,
    next_key_index: u32,
    pub(crate) devices: BTreeMap<u16, Device>,
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
    pub(crate) commands: mpsc::Sender<Command>,
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
pub(crate) struct Live {
    pub(crate) kind: ConnKind,
    pub(crate) commands: mpsc::Sender<Command>,
    /// Milliseconds by which the connection's writer delays every frame.
    pub(crate) delay: Arc<AtomicU32>,
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
    /// Send a stanza as is (the outbound path of message routing).
    Deliver(Node),
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

/// What a queued stanza waits to be acknowledged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueClass {
    /// A message: removed by the device's receipt or `<ack class="message">`.
    Message,
    /// A receipt: removed by the device's `<ack class="receipt">`.
    Receipt,
}

/// A stanza delivered (or waiting to be) and not yet acknowledged.
struct Queued {
    class: QueueClass,
    id: String,
    node: Node,
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

#[derive(Default)]
struct State {
    accounts: BTreeMap<String, Account>,
    /// Per device: stanzas not yet acknowledged, oldest first.
    queues: HashMap<Jid, VecDeque<Queued>>,
    pending: HashMap<[u8; 32], Pending>,
    live: BTreeMap<ConnId, Live>,
    next_conn: u64,
    global_delay_ms: u32,
    device_delay_ms: HashMap<Jid, u32>,
}

/// Snapshot of one account for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountInfo {
    pub phone: PhoneNumber,
    /// `phone@s.whatsapp.net`.
    pub jid: Jid,
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
}

#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind, which are
        // still consistent enough to serve; recover rather than cascade.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection (kind decided later) and returns its id
    /// and the delay cell its writer reads.
    pub(crate) fn open_connection(&self) -> (ConnId, Arc<AtomicU32>) {
        let mut state = self.lock();
        state.next_conn += 1;
        let id = ConnId(state.next_conn);
        (id, Arc::new(AtomicU32::new(state.global_delay_ms)))
    }

    /// Makes a connection reachable from the control side.
    pub(crate) fn attach(
        &self,
        id: ConnId,
        kind: ConnKind,
        commands: mpsc::Sender<Command>,
        delay: Arc<AtomicU32>,
    ) {
        attach_in(&mut self.lock(), id, kind, commands, delay);
    }

    /// Forgets a connection that ended (and its pending pairing, if any).
    pub(crate) fn close_connection(&self, id: ConnId) {
        let mut state = self.lock();
        if let Some(live) = state.live.remove(&id) {
            if let ConnKind::Registration(noise) = live.kind {
                if state.pending.get(&noise).is_some_and(|p| p.conn == id) {
                    state.pending.remove(&noise);
                }
            }
        }
    }

    /// Records that a registration connection was given these refs; a newer
    /// registration with the same noise key replaces an older one.
    pub(crate) fn add_pending(&self, noise_key: [u8; 32], pending: Pending) {
        self.lock().pending.insert(noise_key, pending);
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
        let mut state = self.lock();
        let pending = state
            .pending
            .get(noise_key)
            .ok_or(ReserveError::NoPending)?;
        if !pending.refs.iter().any(|r| r == reference) {
            return Err(ReserveError::UnknownRef);
        }
        let pending = state
            .pending
            .remove(noise_key)
            .ok_or(ReserveError::NoPending)?;
        let account = state
            .accounts
            .entry(phone.as_str().to_owned())
            .or_insert_with(|| Account::new(phone, push_name, now, new_account));
        let device = account.next_device;
        let Some(next) = device.checked_add(1) else {
            state.pending.insert(*noise_key, pending);
            return Err(ReserveError::DevicesExhausted);
        };
        account.next_device = next;
        let key_index = account.next_key_index;
        account.next_key_index = key_index.saturating_add(1);
        Ok(Reservation {
            jid: Jid::with_device(phone.as_str(), device, DEFAULT_USER_SERVER),
            key_index,
            account_identity: account.identity.clone(),
            raw_id: account.raw_id,
            pending,
        })
    }

    /// Puts a pending pairing back after a failed scan, if its connection
    /// is still live and no newer registration took its place.
    pub(crate) fn restore_pending(&self, noise_key: [u8; 32], pending: Pending) {
        let mut state = self.lock();
        if state.live.contains_key(&pending.conn) && !state.pending.contains_key(&noise_key) {
            state.pending.insert(noise_key, pending);
        }
    }

    /// Adds a paired device to its account.
    pub(crate) fn add_device(&self, device: Device, jid: &Jid) -> bool {
        let mut state = self.lock();
        match state.accounts.get_mut(&jid.user) {
            Some(account) => {
                account.devices.insert(device.id, device);
                true
            }
            None => false,
        }
    }

    /// Checks a login (username + device + noise key) and, when accepted,
    /// returns the other live connections of that device.
    pub(crate) fn check_login(&self, jid: &Jid, noise_key: &[u8; 32]) -> LoginCheck {
        let state = self.lock();
        let Some(account) = state.accounts.get(&jid.user) else {
            return LoginCheck::Refused("unknown account");
        };
        let Some(device) = account.devices.get(&jid.device) else {
            return LoginCheck::Refused("unknown or removed device");
        };
        if device.noise_key != *noise_key {
            return LoginCheck::Refused("noise key differs from the one bound at pairing");
        }
        let replaced = state
            .live
            .values()
            .filter(|l| l.kind == ConnKind::Device(jid.clone()))
            .map(|l| l.commands.clone())
            .collect();
        LoginCheck::Accepted {
            created: account.created,
            replaced,
        }
    }

    /// Whether the JID names a known account (device 0 / no device) or a
    /// known companion device.
    pub(crate) fn knows(&self, jid: &Jid) -> bool {
        let state = self.lock();
        state
            .accounts
            .get(&jid.user)
            .is_some_and(|a| jid.device == 0 || a.devices.contains_key(&jid.device))
    }

    /// Command senders of the live, logged-in connections a JID names: one
    /// device, or every device of an account when the JID has device 0.
    pub(crate) fn connections_of(&self, jid: &Jid) -> Vec<mpsc::Sender<Command>> {
        let state = self.lock();
        state
            .live
            .values()
            .filter(|l| matches!(&l.kind, ConnKind::Device(d) if targets(jid, d)))
            .map(|l| l.commands.clone())
            .collect()
    }

    /// Removes a companion device; returns whether it existed.
    pub(crate) fn remove_device(&self, jid: &Jid) -> bool {
        if jid.device == 0 {
            return false;
        }
        let mut state = self.lock();
        state.device_delay_ms.remove(jid);
        state
            .accounts
            .get_mut(&jid.user)
            .is_some_and(|a| a.devices.remove(&jid.device).is_some())
    }

    /// Sets the outgoing delay of one device (0 clears it, so the device
    /// follows the global delay again) or, with `None`, the global delay.
    pub(crate) fn set_delay(&self, jid: Option<&Jid>, ms: u32) {
        let mut state = self.lock();
        match jid {
            Some(jid) if ms == 0 => {
                state.device_delay_ms.remove(jid);
            }
            Some(jid) => {
                state.device_delay_ms.insert(jid.clone(), ms);
            }
            None => state.global_delay_ms = ms,
        }
        let state = &*state;
        for live in state.live.values() {
            let ms = match &live.kind {
                ConnKind::Device(d) => state.delay_for(d),
                ConnKind::Registration(_) => state.global_delay_ms,
            };
            live.delay.store(ms, Ordering::Relaxed);
        }
    }

    /// Stores uploaded prekeys and the (possibly new) signed prekey.
    pub(crate) fn store_prekeys(
        &self,
        jid: &Jid,
        keys: &[(u32, [u8; 32])],
        signed: Option<SignedPreKey>,
    ) -> bool {
        let mut state = self.lock();
        let Some(device) = state
            .accounts
            .get_mut(&jid.user)
            .and_then(|a| a.devices.get_mut(&jid.device))
        else {
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

    /// Number of one-time prekeys stored for a device.
    pub(crate) fn prekey_count(&self, jid: &Jid) -> usize {
        let state = self.lock();
        state
            .accounts
            .get(&jid.user)
            .and_then(|a| a.devices.get(&jid.device))
            .map_or(0, |d| d.prekeys.len())
    }

    /// The device's bundle and prekey ids, for the prekey digest.
    pub(crate) fn prekey_digest(&self, jid: &Jid) -> Option<(CompanionBundle, Vec<u32>)> {
        let state = self.lock();
        let device = state
            .accounts
            .get(&jid.user)
            .and_then(|a| a.devices.get(&jid.device))?;
        Some((
            device.bundle.clone(),
            device.prekeys.keys().copied().collect(),
        ))
    }

    /// Creates an account with only its virtual phone; false if it exists.
    pub(crate) fn create_account(
        &self,
        phone: &PhoneNumber,
        push_name: &str,
        now: u64,
        keys: NewAccount,
    ) -> bool {
        let mut state = self.lock();
        if state.accounts.contains_key(phone.as_str()) {
            return false;
        }
        state.accounts.insert(
            phone.as_str().to_owned(),
            Account::new(phone, push_name, now, keys),
        );
        true
    }

    /// The devices of an account (device 0 first, with key indexes); empty
    /// for an unknown number.
    pub(crate) fn user_devices(&self, user: &str) -> Vec<(u16, u32)> {
        let state = self.lock();
        state
            .accounts
            .get(user)
            .map(Account::device_list)
            .unwrap_or_default()
    }

    /// The account's push name, if the account exists.
    pub(crate) fn push_name(&self, user: &str) -> Option<String> {
        self.lock().accounts.get(user).map(|a| a.push_name.clone())
    }

    /// Bundles for the requested devices (one-time prekeys popped), `None`
    /// for unknown devices; the JIDs are echoed as given.
    pub(crate) fn take_bundles(&self, jids: Vec<Jid>) -> Vec<(Jid, Option<BundleKeys>)> {
        let mut state = self.lock();
        jids.into_iter()
            .map(|jid| {
                let bundle = if jid.server == DEFAULT_USER_SERVER {
                    state.take_bundle(&jid)
                } else {
                    None
                };
                (jid, bundle)
            })
            .collect()
    }

    /// Runs `f` on an account's virtual phone.
    pub(crate) fn with_handset<T>(&self, user: &str, f: impl FnOnce(&mut Phone) -> T) -> Option<T> {
        let mut state = self.lock();
        state.accounts.get_mut(user).map(|a| f(&mut a.handset))
    }

    /// Runs `f` on the sender's phone with the bundles (popped) of the given
    /// devices it has no session with yet. `None` if the sender is unknown.
    pub(crate) fn with_handset_and_bundles<T>(
        &self,
        sender: &str,
        targets: &[Jid],
        f: impl FnOnce(&mut Phone, Vec<Option<BundleKeys>>) -> T,
    ) -> Option<T> {
        let mut state = self.lock();
        let needs: Vec<bool> = {
            let handset = &state.accounts.get(sender)?.handset;
            targets
                .iter()
                .map(|t| !handset.has_session(&super::messaging::address(t)))
                .collect()
        };
        let bundles = targets
            .iter()
            .zip(needs)
            .map(|(t, need)| if need { state.take_bundle(t) } else { None })
            .collect();
        let handset = &mut state.accounts.get_mut(sender)?.handset;
        Some(f(handset, bundles))
    }

    /// Queues a stanza for a device until it acknowledges it, and returns
    /// the device's live connections to deliver it to now.
    pub(crate) fn enqueue(
        &self,
        device: &Jid,
        class: QueueClass,
        id: &str,
        node: Node,
    ) -> Vec<mpsc::Sender<Command>> {
        let mut state = self.lock();
        let queue = state.queues.entry(device.clone()).or_default();
        if queue.len() >= MAX_QUEUED {
            queue.pop_front();
        }
        queue.push_back(Queued {
            class,
            id: id.to_owned(),
            node,
        });
        state
            .live
            .values()
            .filter(|l| l.kind == ConnKind::Device(device.clone()))
            .map(|l| l.commands.clone())
            .collect()
    }

    /// The device acknowledged these ids: they leave its queue.
    pub(crate) fn acknowledge(&self, device: &Jid, class: QueueClass, ids: &[String]) {
        let mut state = self.lock();
        if let Some(queue) = state.queues.get_mut(device) {
            queue.retain(|q| q.class != class || !ids.contains(&q.id));
            if queue.is_empty() {
                state.queues.remove(device);
            }
        }
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
        let mut state = self.lock();
        attach_in(
            &mut state,
            id,
            ConnKind::Device(jid.clone()),
            commands,
            delay,
        );
        state
            .queues
            .get(jid)
            .map(|queue| {
                queue
                    .iter()
                    .map(|q| {
                        let mut node = q.node.clone();
                        node.set_attr("offline", "1");
                        node
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every account with its devices and their connection state.
    pub(crate) fn accounts(&self) -> Vec<AccountInfo> {
        let state = self.lock();
        state
            .accounts
            .values()
            .map(|account| {
                let phone_jid = account.phone.to_jid();
                let phone = DeviceInfo {
                    jid: phone_jid.clone(),
                    platform: String::new(),
                    connected: true,
                    key_index: 0,
                    prekeys: account.handset.unclaimed_prekeys(),
                };
                let companions = account.devices.values().map(|d| {
                    let jid = Jid::with_device(account.phone.as_str(), d.id, DEFAULT_USER_SERVER);
                    let connected = state
                        .live
                        .values()
                        .any(|l| l.kind == ConnKind::Device(jid.clone()));
                    DeviceInfo {
                        jid,
                        platform: d.platform.clone(),
                        connected,
                        key_index: d.key_index,
                        prekeys: d.prekeys.len(),
                    }
                });
                AccountInfo {
                    phone: account.phone.clone(),
                    jid: phone_jid,
                    push_name: account.push_name.clone(),
                    devices: std::iter::once(phone).chain(companions).collect(),
                }
            })
            .collect()
    }
}

impl Account {
    fn new(phone: &PhoneNumber, push_name: &str, now: u64, keys: NewAccount) -> Self {
        Self {
            phone: phone.clone(),
            push_name: push_name.to_owned(),
            identity: keys.identity,
            raw_id: keys.raw_id,
            created: now,
            handset: keys.handset,
            next_device: 1,
            next_key_index: 1,
            devices: BTreeMap::new(),
        }
    }

    /// Device 0 and every companion with its key index.
    fn device_list(&self) -> Vec<(u16, u32)> {
        std::iter::once((0, 0))
            .chain(self.devices.values().map(|d| (d.id, d.key_index)))
            .collect()
    }
}

impl State {
    /// A device's bundle, popping one of its one-time prekeys.
    fn take_bundle(&mut self, jid: &Jid) -> Option<BundleKeys> {
        let account = self.accounts.get_mut(&jid.user)?;
        if jid.device == 0 {
            return Some(account.handset.take_bundle());
        }
        let device = account.devices.get_mut(&jid.device)?;
        let one_time = device.prekeys.pop_first();
        Some(BundleKeys {
            registration_id: device.bundle.registration_id,
            identity: device.bundle.identity,
            signed_prekey: device.bundle.signed_prekey.clone(),
            one_time,
        })
    }

    fn delay_for(&self, jid: &Jid) -> u32 {
        self.device_delay_ms
            .get(jid)
            .copied()
            .unwrap_or(self.global_delay_ms)
    }
}

fn attach_in(
    state: &mut State,
    id: ConnId,
    kind: ConnKind,
    commands: mpsc::Sender<Command>,
    delay: Arc<AtomicU32>,
) {
    let ms = match &kind {
        ConnKind::Device(jid) => state.delay_for(jid),
        ConnKind::Registration(_) => state.global_delay_ms,
    };
    delay.store(ms, Ordering::Relaxed);
    state.live.insert(
        id,
        Live {
            kind,
            commands,
            delay,
        },
    );
}

/// Whether `target` (a device, or an account when its device is 0) covers
/// the connected device `device`.
fn targets(target: &Jid, device: &Jid) -> bool {
    target.user == device.user && (target.device == 0 || target.device == device.device)
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
                commands: tx,
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
}
