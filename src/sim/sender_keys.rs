//! A virtual phone's sender keys: its own key per group (with the devices
//! it has handed the key to), and the keys other members sent it. The
//! phone rotates its own key when a device it shared the key with is no
//! longer in the group, so a removed member cannot read what follows. Pure
//! state and crypto; imports `wa` and the generated protobufs only.

use std::collections::{HashMap, HashSet, VecDeque};

use rand::{CryptoRng, RngCore};

use super::snapshot::{InvalidState, SavedOwnSenderKey, SavedSenderKey};
use crate::proto::wa::message::SenderKeyDistributionMessage;
use crate::proto::wa::Message;
use crate::wa::jid::Jid;
use crate::wa::signal::{
    create_distribution_message, group_decrypt, group_encrypt, process_distribution_message,
    ProtocolAddress, SenderKeyName, SenderKeyRecord, SignalError,
};

/// Most retry receipts a phone sends for one message (as WhatsApp clients).
pub(crate) const MAX_RETRIES: u32 = 5;
/// Most messages whose retries are counted; the oldest are forgotten.
const MAX_RETRIED_MESSAGES: usize = 0x400;

/// The phone's own sender key in one group.
#[derive(Default)]
struct OwnKey {
    record: SenderKeyRecord,
    /// Devices that hold this key.
    shared_with: HashSet<Jid>,
}

/// Sender keys of one phone.
#[derive(Default)]
pub(crate) struct SenderKeys {
    own: HashMap<String, OwnKey>,
    received: HashMap<SenderKeyName, SenderKeyRecord>,
    /// Retry receipts sent per (author device, message id), oldest first.
    retries: HashMap<(String, String), u32>,
    retried: VecDeque<(String, String)>,
}

impl SenderKeys {
    /// Of `devices` (every member device the next message goes to), those
    /// that lack the phone's key for `group`. If a device that had the key
    /// is gone from the group, the key is replaced first and every device
    /// lacks the new one.
    pub(crate) fn lacking(&mut self, group: &str, devices: &[Jid]) -> Vec<Jid> {
        let own = self.own.entry(group.to_owned()).or_default();
        let current: HashSet<&Jid> = devices.iter().collect();
        if own.shared_with.iter().any(|jid| !current.contains(jid)) {
            *own = OwnKey::default();
        }
        devices
            .iter()
            .filter(|jid| !own.shared_with.contains(*jid))
            .cloned()
            .collect()
    }

    /// The `Message{senderKeyDistributionMessage}` carrying the phone's key
    /// for `group` (created if there is none).
    pub(crate) fn distribution(
        &mut self,
        group: &str,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Message {
        let own = self.own.entry(group.to_owned()).or_default();
        let bytes = create_distribution_message(&mut own.record, rng);
        Message {
            sender_key_distribution_message: Some(SenderKeyDistributionMessage {
                group_id: Some(group.to_owned()),
                axolotl_sender_key_distribution_message: Some(bytes),
            }),
            ..Default::default()
        }
    }

    /// Records that these devices were sent the key.
    pub(crate) fn shared(&mut self, group: &str, devices: impl IntoIterator<Item = Jid>) {
        let own = self.own.entry(group.to_owned()).or_default();
        own.shared_with.extend(devices);
    }

    /// Encrypts an already padded payload as an `skmsg` for `group`.
    pub(crate) fn encrypt(
        &mut self,
        group: &str,
        padded: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<u8>, SignalError> {
        let own = self.own.entry(group.to_owned()).or_default();
        group_encrypt(&mut own.record, padded, rng)
    }

    /// Stores a key another member sent for `group`.
    pub(crate) fn process(
        &mut self,
        group: &str,
        sender: &ProtocolAddress,
        distribution: &[u8],
    ) -> Result<(), SignalError> {
        let record = self.received.entry(name(group, sender)).or_default();
        process_distribution_message(record, distribution)
    }

    /// Decrypts an `skmsg` from `sender` in `group` (padded plaintext).
    pub(crate) fn decrypt(
        &mut self,
        group: &str,
        sender: &ProtocolAddress,
        message: &[u8],
    ) -> Result<Vec<u8>, SignalError> {
        let record = self
            .received
            .get_mut(&name(group, sender))
            .ok_or(SignalError::NoSenderKey(0))?;
        group_decrypt(record, message)
    }
}

impl SenderKeys {
    /// The count of the next retry receipt for a message the phone could
    /// not decrypt, or `None` once it asked [`MAX_RETRIES`] times.
    pub(crate) fn next_retry(&mut self, author: &str, id: &str) -> Option<u32> {
        let key = (author.to_owned(), id.to_owned());
        if !self.retries.contains_key(&key) {
            if self.retried.len() >= MAX_RETRIED_MESSAGES {
                if let Some(old) = self.retried.pop_front() {
                    self.retries.remove(&old);
                }
            }
            self.retried.push_back(key.clone());
        }
        let count = self.retries.entry(key).or_insert(0);
        *count += 1;
        (*count <= MAX_RETRIES).then_some(*count)
    }
}

impl SenderKeys {
    /// The phone's own keys and the ones it received, as the state file
    /// keeps them (sorted, so an unchanged state encodes the same). Retry
    /// counts are not kept.
    pub(crate) fn saved(&self) -> (Vec<SavedOwnSenderKey>, Vec<SavedSenderKey>) {
        let mut own: Vec<SavedOwnSenderKey> = self
            .own
            .iter()
            .map(|(group, key)| {
                let mut shared_with: Vec<String> =
                    key.shared_with.iter().map(Jid::to_string).collect();
                shared_with.sort();
                SavedOwnSenderKey {
                    group: group.clone(),
                    record: key.record.serialize().to_vec(),
                    shared_with,
                }
            })
            .collect();
        own.sort_by(|a, b| a.group.cmp(&b.group));
        let mut received: Vec<SavedSenderKey> = self
            .received
            .iter()
            .map(|(name, record)| SavedSenderKey {
                group_id: name.group_id.clone(),
                name: name.sender.name.clone(),
                device: name.sender.device,
                record: record.serialize().to_vec(),
            })
            .collect();
        received.sort_by(|a, b| {
            (&a.group_id, &a.name, a.device).cmp(&(&b.group_id, &b.name, b.device))
        });
        (own, received)
    }

    /// Sender keys from the state file.
    pub(crate) fn restore(
        own: &[SavedOwnSenderKey],
        received: &[SavedSenderKey],
    ) -> Result<Self, InvalidState> {
        let mut keys = Self::default();
        for saved in own {
            let record = SenderKeyRecord::deserialize(&saved.record).map_err(|err| {
                InvalidState::field(format_args!("own sender key of {}: {err}", saved.group))
            })?;
            let shared_with = saved
                .shared_with
                .iter()
                .map(|jid| {
                    jid.parse::<Jid>().map_err(|err| {
                        InvalidState::field(format_args!("sender key holder {jid}: {err}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            keys.own.insert(
                saved.group.clone(),
                OwnKey {
                    record,
                    shared_with,
                },
            );
        }
        for saved in received {
            let record = SenderKeyRecord::deserialize(&saved.record).map_err(|err| {
                InvalidState::field(format_args!("sender key in {}: {err}", saved.group_id))
            })?;
            let sender = ProtocolAddress::new(saved.name.clone(), saved.device);
            keys.received.insert(name(&saved.group_id, &sender), record);
        }
        Ok(keys)
    }
}

fn name(group: &str, sender: &ProtocolAddress) -> SenderKeyName {
    SenderKeyName {
        group_id: group.to_owned(),
        sender: sender.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn jid(text: &str) -> Jid {
        text.parse().expect("valid jid")
    }

    #[test]
    fn keys_reach_members_and_rotate_when_one_leaves() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut alice = SenderKeys::default();
        let mut bob = SenderKeys::default();
        let group = "120363000000000001@g.us";
        let devices = [jid("2@s.whatsapp.net"), jid("3@s.whatsapp.net")];
        assert_eq!(alice.lacking(group, &devices), devices);
        let message = alice.distribution(group, &mut rng);
        let bytes = message
            .sender_key_distribution_message
            .and_then(|m| m.axolotl_sender_key_distribution_message)
            .expect("distribution bytes");
        alice.shared(group, devices.iter().cloned());
        assert!(alice.lacking(group, &devices).is_empty());

        let from = ProtocolAddress::new("1", 0);
        bob.process(group, &from, &bytes).expect("processes");
        let skmsg = alice.encrypt(group, b"hello", &mut rng).expect("encrypts");
        assert_eq!(
            bob.decrypt(group, &from, &skmsg).expect("decrypts"),
            b"hello"
        );

        // Device 3 left: the key is replaced and device 2 lacks the new one.
        let remaining = [jid("2@s.whatsapp.net")];
        assert_eq!(alice.lacking(group, &remaining), remaining);
        alice.distribution(group, &mut rng);
        let rotated = alice.encrypt(group, b"after", &mut rng).expect("encrypts");
        assert!(
            bob.decrypt(group, &from, &rotated).is_err(),
            "the old key does not open the new chain"
        );
    }

    #[test]
    fn retries_are_counted_per_message_and_capped() {
        let mut keys = SenderKeys::default();
        let counts: Vec<Option<u32>> = (0..=MAX_RETRIES)
            .map(|_| keys.next_retry("1:1@s.whatsapp.net", "M1"))
            .collect();
        assert_eq!(counts, [Some(1), Some(2), Some(3), Some(4), Some(5), None]);
        assert_eq!(keys.next_retry("1:1@s.whatsapp.net", "M2"), Some(1));
        for n in 0..MAX_RETRIED_MESSAGES {
            keys.next_retry("1:1@s.whatsapp.net", &n.to_string());
        }
        assert!(keys.retries.len() <= MAX_RETRIED_MESSAGES);
        assert_eq!(keys.retries.len(), keys.retried.len());
    }
}
