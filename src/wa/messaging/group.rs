//! Sending to groups with sender keys.
//!
//! A message to a group is encrypted once with our sender key of that
//! group (`skmsg`), which every member device decrypts. Devices that do not
//! hold that key yet get it first, pairwise (`pkmsg`/`msg` carrying a
//! `SenderKeyDistributionMessage`), in the same stanza. Which devices hold
//! it is remembered persistently ([`SenderKeyMemory`]), committed with the
//! message before it reaches the wire, so a restart does not hand the key
//! to everybody again. A device that misses the key anyway (a lost stanza,
//! a new device) asks with a retry receipt and gets it then.
//!
//! The key changes when members may have left (a `w:gp2` remove or leave,
//! or a member list without someone who held the key): a new key is
//! created and distributed to the remaining devices, so a removed member
//! cannot read what follows. One device we cannot encrypt for does not
//! fail the send; it is left out of the memory and gets the key later.

use std::collections::{HashMap, HashSet};

use prost::Message as _;

use crate::proto::wa::message::SenderKeyDistributionMessage;
use crate::proto::wa::Message;
use crate::wa::groups::{self, GroupChange};
use crate::wa::jid::Jid;
use crate::wa::signal::{self, ProtocolAddress, SenderKeyName, SenderKeyRecord, SessionRecord};

use super::iq::{Awaiting, Devices, GroupMembers};
use super::keys::{IdempotencyRecord, KeyError, SenderKeyMemory, SentRecord, Txn};
use super::outbound::Outgoing;
use super::{address_of, Cx, Engine, SendError, DEVICE_CACHE_MS};

/// How long a group's member list is trusted without asking again
/// (membership notifications drop it sooner).
pub(super) const GROUP_CACHE_MS: u64 = 5 * 60_000;
/// Groups whose member lists are kept.
const MAX_CACHED_GROUPS: usize = 256;

impl Engine {
    /// A send to a group: its members, their devices, then the message.
    pub(super) fn start_group_send(
        &mut self,
        send: Outgoing,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let fresh = self
            .groups
            .get(&send.chat)
            .filter(|(_, at)| at + GROUP_CACHE_MS > cx.now_ms)
            .map(|(members, _)| members.clone());
        match fresh {
            Some(members) => self.group_devices(send, members, cx),
            None => {
                let group = send.chat.clone();
                self.issue(
                    GroupMembers(group),
                    Awaiting::GroupMembers(Box::new(send)),
                    &mut cx.step,
                );
                Ok(())
            }
        }
    }

    /// The member list arrived (or was cached): fetch the device lists not
    /// known, in one usync, or go on.
    pub(super) fn group_devices(
        &mut self,
        send: Outgoing,
        members: Vec<Jid>,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let Some(own) = cx.creds.account.as_ref().map(|a| a.jid.to_non_ad()) else {
            cx.step.fail(send, SendError::NotConnected);
            return Ok(());
        };
        let own_lid = cx.creds.account.as_ref().and_then(|a| a.lid.clone());
        let is_own =
            |m: &Jid| m.user == own.user || own_lid.as_ref().is_some_and(|lid| lid.user == m.user);
        if !members.iter().any(is_own) {
            let group = send.chat.to_string();
            cx.step.fail(send, SendError::NotAMember(group));
            return Ok(());
        }
        let now_ms = cx.now_ms;
        let stale: Vec<Jid> = members
            .iter()
            .filter(|user| {
                self.devices
                    .get(*user)
                    .is_none_or(|(_, at)| at + DEVICE_CACHE_MS <= now_ms)
            })
            .cloned()
            .collect();
        if stale.is_empty() {
            return self.route_group(send, cx);
        }
        let sid = format!("{:08x}", rand::RngCore::next_u32(&mut self.rng));
        self.issue(
            Devices { users: stale, sid },
            Awaiting::Devices(Box::new(send)),
            &mut cx.step,
        );
        Ok(())
    }

    /// Remembers a group's members.
    pub(super) fn remember_group(&mut self, group: Jid, members: Vec<Jid>, now_ms: u64) {
        if self.groups.len() >= MAX_CACHED_GROUPS && !self.groups.contains_key(&group) {
            self.groups
                .retain(|_, (_, at)| *at + GROUP_CACHE_MS > now_ms);
            if self.groups.len() >= MAX_CACHED_GROUPS {
                self.groups.clear();
            }
        }
        self.groups.insert(group, (members, now_ms));
    }

    /// Devices known: fetch bundles for the devices that need our key and
    /// have no session, or encrypt.
    pub(super) fn route_group(
        &mut self,
        send: Outgoing,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let Some(own) = cx.creds.account.as_ref().map(|a| a.jid.clone()) else {
            cx.step.fail(send, SendError::NotConnected);
            return Ok(());
        };
        let members = self
            .groups
            .get(&send.chat)
            .map(|(m, _)| m.clone())
            .unwrap_or_default();
        let mut targets: Vec<Jid> = Vec::new();
        let own_lid = cx.creds.account.as_ref().and_then(|a| a.lid.clone());
        for member in &members {
            let devices = self
                .devices
                .get(member)
                .map(|(d, _)| d.clone())
                .unwrap_or_default();
            for device in devices {
                // In a LID-addressed group this device is listed under the
                // account's LID.
                let own_user = device.user == own.user
                    || own_lid.as_ref().is_some_and(|lid| lid.user == device.user);
                let same_device = own_user && device.device == own.device;
                if !same_device && !targets.contains(&device) {
                    targets.push(device);
                }
            }
        }
        let group = send.chat.to_string();
        let memory = self.current_memory(&group, &own, &members, &mut cx.txn)?;
        // Only the devices that lack our key get a pairwise payload.
        let pairwise: Vec<Jid> = targets
            .iter()
            .filter(|t| !memory.contains(&t.to_string()))
            .cloned()
            .collect();
        self.encrypt_or_fetch_bundles(send, targets, &pairwise, cx)
    }

    /// The devices holding our current key of `group`; the key is replaced
    /// (and the memory emptied) when someone who held it is no longer a
    /// member.
    fn current_memory(
        &mut self,
        group: &str,
        own: &Jid,
        members: &[Jid],
        txn: &mut Txn<'_>,
    ) -> Result<HashSet<String>, KeyError> {
        let name = own_sender_key(group, own);
        let has_key = txn.sender_key(&name)?.is_some_and(|r| r.has_own_key());
        if !has_key {
            return Ok(HashSet::new());
        }
        let memory: HashSet<String> = txn.sender_key_memory(group)?.devices.into_iter().collect();
        let member_users: HashSet<&str> = members.iter().map(|m| m.user.as_str()).collect();
        let departed = memory.iter().any(|device| {
            device
                .parse::<Jid>()
                .map_or(true, |jid| !member_users.contains(jid.user.as_str()))
        });
        if departed {
            tracing::info!(
                group,
                "a member left since the sender key was shared: new key"
            );
            rotate(group, own, txn);
            return Ok(HashSet::new());
        }
        Ok(memory)
    }

    /// Encrypts the message once with our sender key, and the key pairwise
    /// for the devices that lack it; queues the stanza after the commit
    /// that holds the advanced chains, the memory, the sent copy and the
    /// idempotency record.
    pub(super) fn encrypt_for_group(
        &mut self,
        send: Outgoing,
        targets: Vec<Jid>,
        mut fresh: HashMap<ProtocolAddress, SessionRecord>,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let creds = cx.creds;
        let Some(account) = creds.account.as_ref() else {
            cx.step.fail(send, SendError::NotConnected);
            return Ok(());
        };
        let own = &account.jid;
        let group = send.chat.to_string();
        let name = own_sender_key(&group, own);
        let mut record = cx.txn.sender_key(&name)?.unwrap_or_default();
        let mut memory: HashSet<String> = if record.has_own_key() {
            cx.txn
                .sender_key_memory(&group)?
                .devices
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        let distribution = signal::create_distribution_message(&mut record, &mut self.rng);
        let for_group = send.message.encode_to_vec();
        let padded = signal::pad(&mut self.rng, &for_group);
        let skmsg = match signal::group_encrypt(&mut record, &padded, &mut self.rng) {
            Ok(skmsg) => skmsg,
            Err(e) => {
                cx.step
                    .fail(send, SendError::Encryption(format!("sender key: {e}")));
                return Ok(());
            }
        };
        let key_share = Message {
            sender_key_distribution_message: Some(SenderKeyDistributionMessage {
                group_id: Some(group.clone()),
                axolotl_sender_key_distribution_message: Some(distribution),
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let mut pairwise = Vec::new();
        for target in targets {
            let device = target.to_string();
            if memory.contains(&device) {
                continue;
            }
            let address = address_of(&target);
            let session = match fresh.remove(&address) {
                Some(r) => Some(r),
                None => cx.txn.session(&address)?,
            };
            let Some(mut session) = session.filter(SessionRecord::has_current_session) else {
                continue;
            };
            let padded = signal::pad(&mut self.rng, &key_share);
            if let Ok(ct) = signal::encrypt(&mut session, &creds.identity_key, &padded) {
                cx.txn.put_session(address, session);
                memory.insert(device);
                pairwise.push((target, ct));
            }
        }
        let stanza = super::outbound::mark_stanza(
            groups::group_stanza(
                &send.id,
                &send.chat,
                &pairwise,
                skmsg,
                &account.signed_identity,
            ),
            &send.message,
        );
        cx.txn.put_sender_key(name, record);
        let mut devices: Vec<String> = memory.into_iter().collect();
        devices.sort();
        cx.txn
            .put_sender_key_memory(group.clone(), SenderKeyMemory { devices });
        cx.txn.put_sent(
            send.id.clone(),
            SentRecord {
                chat: group,
                message: for_group,
                sent_at_ms: cx.now_ms,
            },
        );
        if let Some(key) = &send.idempotency_key {
            cx.txn.put_idempotency(
                key.clone(),
                IdempotencyRecord {
                    message_id: send.id.clone(),
                    acked_at_s: 0,
                    fingerprint: send.fingerprint.clone(),
                    stanza: crate::wa::binary::encode(&stanza),
                    created_at_ms: cx.now_ms,
                    key: key.clone(),
                },
            );
        }
        cx.step.transmit.push(stanza);
        self.in_flight.insert(send.id.clone(), send);
        Ok(())
    }

    /// A membership change: the member list is asked again at the next
    /// send, and when members may have left our key is replaced.
    pub(super) fn on_group_change(&mut self, change: &GroupChange, cx: &mut Cx<'_, '_>) {
        if change.kind.removes_members() || change.kind.adds_members() {
            self.groups.remove(&change.group);
        }
        if change.kind.removes_members() {
            if let Some(own) = cx.creds.account.as_ref().map(|a| a.jid.clone()) {
                rotate(&change.group.to_string(), &own, &mut cx.txn);
            }
        }
    }
}

/// Our sender key of `group`.
fn own_sender_key(group: &str, own: &Jid) -> SenderKeyName {
    SenderKeyName {
        group_id: group.to_owned(),
        sender: address_of(own),
    }
}

/// Drops our sender key of `group` and its memory: the next send creates a
/// new key and gives it to every member device.
fn rotate(group: &str, own: &Jid, txn: &mut Txn<'_>) {
    txn.put_sender_key(own_sender_key(group, own), SenderKeyRecord::new());
    txn.put_sender_key_memory(group.to_owned(), SenderKeyMemory::default());
}

/// The key distribution to put in a resend to one device of a group, with
/// our current key (none when we have no key for the group).
pub(super) fn key_share_for_resend(
    group: &str,
    own: &Jid,
    txn: &mut Txn<'_>,
    rng: &mut (impl rand::RngCore + rand::CryptoRng),
) -> Result<Option<SenderKeyDistributionMessage>, KeyError> {
    let name = own_sender_key(group, own);
    let Some(mut record) = txn.sender_key(&name)? else {
        return Ok(None);
    };
    if !record.has_own_key() {
        return Ok(None);
    }
    let distribution = signal::create_distribution_message(&mut record, rng);
    Ok(Some(SenderKeyDistributionMessage {
        group_id: Some(group.to_owned()),
        axolotl_sender_key_distribution_message: Some(distribution),
    }))
}
