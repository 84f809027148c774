//! Per-device delivery state of the simulated server: the stanzas a device
//! has not acknowledged yet, its logged-in connections, and the message ids
//! it sent that the server accepted. Sharded by device JID so that a
//! delivery locks one small shard for a few map operations, whatever the
//! number of devices online. No I/O and no `.await` under a lock; imports
//! `wa` only.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::registry::{Command, ConnId};
use super::snapshot::{InvalidState, SavedMailbox, SavedQueued};
use crate::wa::binary::Node;
use crate::wa::jid::Jid;

/// Most unacknowledged stanzas kept per device; the oldest are dropped first
/// (a device that never comes back must not grow the queue forever).
const MAX_QUEUED: usize = 0x1000;
/// Shards: enough that concurrent deliveries to different devices rarely
/// share a lock on a small machine.
const SHARDS: usize = 0x40;
/// How long the server remembers that it accepted a message id from a
/// device: longer than a caller waits before retrying a send whose outcome
/// it does not know. Entries are dropped when the device sends again.
pub(crate) const ACCEPTED_ID_SECS: u64 = 300;
/// Most remembered ids per device (about 1 MiB), so a device sending very
/// fast holds bounded memory; only above 100 messages/s from one device
/// does this shorten the window below [`ACCEPTED_ID_SECS`].
const MAX_ACCEPTED_IDS: usize = 0x8000;

/// What a queued stanza waits to be acknowledged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueClass {
    /// A message: removed by the device's receipt or `<ack class="message">`.
    Message,
    /// A receipt: removed by the device's `<ack class="receipt">`.
    Receipt,
    /// A notification: removed by the device's `<ack class="notification">`.
    Notification,
}

/// Whether the server takes a message a device sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acceptance {
    /// First time this id comes from this device: route it, ack with now.
    New,
    /// Already accepted at `t`: ack again with that timestamp, route nothing.
    Repeat { t: u64 },
}

/// A stanza delivered (or waiting to be) and not yet acknowledged.
struct Queued {
    class: QueueClass,
    id: String,
    node: Arc<Node>,
}

/// A logged-in connection of a device.
struct DeviceConn {
    id: ConnId,
    commands: mpsc::Sender<Command>,
}

/// Everything the server keeps per device for delivery.
#[derive(Default)]
struct Mailbox {
    /// Stanzas not yet acknowledged, oldest first.
    queue: VecDeque<Queued>,
    /// Logged-in connections (one, or briefly two while one replaces another).
    conns: Vec<DeviceConn>,
    /// Message ids this device sent that the server accepted.
    accepted: AcceptedIds,
}

impl Mailbox {
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.conns.is_empty() && self.accepted.order.is_empty()
    }

    fn senders(&self) -> Vec<mpsc::Sender<Command>> {
        self.conns.iter().map(|c| c.commands.clone()).collect()
    }
}

/// Recently accepted message ids of one device, bounded by age and count.
/// Ids are kept as 64-bit keyed hashes: a false match needs a collision
/// among a few thousand entries under a per-process random key.
#[derive(Default)]
struct AcceptedIds {
    /// (key, accepted at), oldest first.
    order: VecDeque<(u64, u64)>,
    at: HashMap<u64, u64>,
}

impl AcceptedIds {
    fn accept(&mut self, key: u64, now: u64) -> Acceptance {
        while let Some(&(old, t)) = self.order.front() {
            if now.saturating_sub(t) < ACCEPTED_ID_SECS && self.order.len() < MAX_ACCEPTED_IDS {
                break;
            }
            self.order.pop_front();
            if self.at.get(&old) == Some(&t) {
                self.at.remove(&old);
            }
        }
        if let Some(&t) = self.at.get(&key) {
            return Acceptance::Repeat { t };
        }
        self.order.push_back((key, now));
        self.at.insert(key, now);
        Acceptance::New
    }
}

/// Every device's mailbox, sharded by device JID. A mailbox exists only
/// while it holds something.
pub(crate) struct Mailboxes {
    shards: Box<[Mutex<HashMap<Jid, Mailbox>>]>,
    /// Picks a device's shard and keys accepted message ids.
    hasher: RandomState,
}

impl Default for Mailboxes {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Mailboxes {
    fn shard(&self, device: &Jid) -> MutexGuard<'_, HashMap<Jid, Mailbox>> {
        // The modulo keeps the index in range whatever the hash.
        let index = usize::try_from(self.hasher.hash_one(device) % SHARDS as u64).unwrap_or(0);
        // A panic while holding the lock leaves plain maps behind, which
        // are still consistent enough to serve; recover rather than cascade.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a device's mailbox (created if missing) and drops the
    /// mailbox afterwards if nothing is left in it.
    fn with<T>(&self, device: &Jid, f: impl FnOnce(&mut Mailbox) -> T) -> T {
        let mut shard = self.shard(device);
        let mailbox = shard.entry(device.clone()).or_default();
        let out = f(mailbox);
        if mailbox.is_idle() {
            shard.remove(device);
        }
        out
    }

    /// Command senders of a device's logged-in connections.
    pub(crate) fn senders(&self, device: &Jid) -> Vec<mpsc::Sender<Command>> {
        self.shard(device)
            .get(device)
            .map(Mailbox::senders)
            .unwrap_or_default()
    }

    /// Whether a device has a logged-in connection.
    pub(crate) fn connected(&self, device: &Jid) -> bool {
        self.shard(device)
            .get(device)
            .is_some_and(|m| !m.conns.is_empty())
    }

    pub(crate) fn add_conn(&self, device: &Jid, id: ConnId, commands: mpsc::Sender<Command>) {
        self.with(device, |mailbox| {
            mailbox.conns.push(DeviceConn { id, commands });
        });
    }

    pub(crate) fn remove_conn(&self, device: &Jid, id: ConnId) {
        self.with(device, |mailbox| mailbox.conns.retain(|c| c.id != id));
    }

    /// Adds a logged-in connection and returns, in the same step, what is
    /// waiting for the device (marked `offline`): later stanzas go out live,
    /// so nothing is both delivered live and replayed.
    pub(crate) fn attach(
        &self,
        device: &Jid,
        id: ConnId,
        commands: mpsc::Sender<Command>,
    ) -> Vec<Node> {
        self.with(device, |mailbox| {
            mailbox.conns.push(DeviceConn { id, commands });
            mailbox
                .queue
                .iter()
                .map(|q| {
                    let mut node = Node::clone(&q.node);
                    node.set_attr("offline", "1");
                    node
                })
                .collect()
        })
    }

    /// Whether `key` (a message's acceptance key) is new from `sender`.
    pub(crate) fn accept(&self, sender: &Jid, key: &str, now: u64) -> Acceptance {
        let key = self.hasher.hash_one(key);
        self.with(sender, |mailbox| mailbox.accepted.accept(key, now))
    }

    /// Queues a stanza until the device acknowledges it; returns its live
    /// connections to deliver it to now.
    pub(crate) fn enqueue(
        &self,
        device: &Jid,
        class: QueueClass,
        id: &str,
        node: Arc<Node>,
    ) -> Vec<mpsc::Sender<Command>> {
        self.with(device, |mailbox| {
            if mailbox.queue.len() >= MAX_QUEUED {
                mailbox.queue.pop_front();
            }
            mailbox.queue.push_back(Queued {
                class,
                id: id.to_owned(),
                node,
            });
            mailbox.senders()
        })
    }

    /// The device acknowledged these ids: they leave its queue.
    pub(crate) fn acknowledge(&self, device: &Jid, class: QueueClass, ids: &[String]) {
        let mut shard = self.shard(device);
        let Some(mailbox) = shard.get_mut(device) else {
            return;
        };
        for id in ids {
            // Devices acknowledge mostly in delivery order, so the match is
            // almost always at the front: no scan of the whole queue.
            if let Some(at) = mailbox
                .queue
                .iter()
                .position(|q| q.class == class && q.id == *id)
            {
                mailbox.queue.remove(at);
            }
        }
        if mailbox.is_idle() {
            shard.remove(device);
        }
    }

    /// Every device's queue of unacknowledged stanzas, as the state file
    /// keeps them (by device JID). Connections and accepted ids are not
    /// kept.
    pub(crate) fn saved(&self) -> Vec<SavedMailbox> {
        let mut saved: Vec<SavedMailbox> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            saved.extend(
                shard
                    .iter()
                    .filter(|(_, mailbox)| !mailbox.queue.is_empty())
                    .map(|(device, mailbox)| SavedMailbox {
                        device: device.to_string(),
                        queue: mailbox
                            .queue
                            .iter()
                            .map(|q| SavedQueued {
                                class: match q.class {
                                    QueueClass::Message => 0,
                                    QueueClass::Receipt => 1,
                                    QueueClass::Notification => 2,
                                },
                                id: q.id.clone(),
                                node: crate::wa::binary::encode(&q.node),
                            })
                            .collect(),
                    }),
            );
        }
        saved.sort_by(|a, b| a.device.cmp(&b.device));
        saved
    }

    /// Queues from the state file.
    pub(crate) fn restore(saved: &[SavedMailbox]) -> Result<Self, InvalidState> {
        let mailboxes = Self::default();
        for mailbox in saved {
            let device: Jid = mailbox.device.parse().map_err(|err| {
                InvalidState::field(format_args!("mailbox of {:?}: {err}", mailbox.device))
            })?;
            let skip = mailbox.queue.len().saturating_sub(MAX_QUEUED);
            let queue = mailbox
                .queue
                .iter()
                .skip(skip)
                .map(|q| {
                    let class = match q.class {
                        0 => QueueClass::Message,
                        1 => QueueClass::Receipt,
                        2 => QueueClass::Notification,
                        other => {
                            return Err(InvalidState::field(format_args!(
                                "queued stanza {} for {device}: class {other}",
                                q.id
                            )))
                        }
                    };
                    let node = crate::wa::binary::decode(&q.node).map_err(|err| {
                        InvalidState::field(format_args!(
                            "queued stanza {} for {device}: {err}",
                            q.id
                        ))
                    })?;
                    Ok(Queued {
                        class,
                        id: q.id.clone(),
                        node: Arc::new(node),
                    })
                })
                .collect::<Result<VecDeque<Queued>, InvalidState>>()?;
            if !queue.is_empty() {
                mailboxes.shard(&device).insert(
                    device.clone(),
                    Mailbox {
                        queue,
                        ..Mailbox::default()
                    },
                );
            }
        }
        Ok(mailboxes)
    }

    /// Whether a device has a mailbox at all.
    #[cfg(test)]
    pub(crate) fn holds(&self, device: &Jid) -> bool {
        self.shard(device).contains_key(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_queues_come_back_in_order() {
        let mailboxes = Mailboxes::default();
        let device: Jid = "15550001111:1@s.whatsapp.net".parse().expect("jid");
        let message = Node::new("message").attr("id", "M1").attr(
            "from",
            "15550002222@s.whatsapp.net".parse::<Jid>().expect("jid"),
        );
        mailboxes.enqueue(&device, QueueClass::Message, "M1", Arc::new(message));
        mailboxes.enqueue(
            &device,
            QueueClass::Receipt,
            "M0",
            Arc::new(Node::new("receipt")),
        );
        let saved = mailboxes.saved();
        let again = Mailboxes::restore(&saved).expect("restores");
        assert_eq!(again.saved(), saved);
        let (tx, _rx) = mpsc::channel(1);
        let waiting = again.attach(&device, ConnId(1), tx);
        assert_eq!(waiting.len(), 2);
        assert_eq!(waiting[0].attr_str("id"), Some("M1"));
        assert_eq!(waiting[0].attr_str("offline"), Some("1"));
        assert_eq!(waiting[1].tag, "receipt");

        let mut bad = saved.clone();
        bad[0].queue[0].node = vec![0xF8];
        assert!(Mailboxes::restore(&bad).is_err());
        let mut bad = saved;
        bad[0].queue[0].class = 9;
        assert!(Mailboxes::restore(&bad).is_err());
    }

    #[test]
    fn accepted_ids_are_bounded_per_device() {
        let mut ids = AcceptedIds::default();
        for key in 0..MAX_ACCEPTED_IDS as u64 + 10 {
            assert_eq!(ids.accept(key, 1), Acceptance::New);
        }
        assert!(ids.order.len() <= MAX_ACCEPTED_IDS);
        assert_eq!(ids.order.len(), ids.at.len());
        assert_eq!(ids.accept(0, 1), Acceptance::New, "the oldest fell out");
        let newest = MAX_ACCEPTED_IDS as u64 + 9;
        assert_eq!(ids.accept(newest, 2), Acceptance::Repeat { t: 1 });
    }
}
