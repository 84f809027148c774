//! The engine without sockets: two engines (ours and a peer's) and a small
//! server in one process on a fake clock. The server answers device and
//! bundle queries from the devices it knows, turns a fanned-out `<message>`
//! into each recipient's copy, acknowledges, and forwards receipts — enough
//! to drive both engines through sends, receipts, retries and failures.

use std::collections::{HashMap, HashSet, VecDeque};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::wa::binary;
use crate::wa::creds::Account;
use crate::wa::signal::{PreKey, SenderKeyName, SenderKeyRecord, SessionRecord};

/// A store in memory: commit = apply.
#[derive(Default)]
struct MemKeys {
    sessions: HashMap<ProtocolAddress, SessionRecord>,
    prekeys: HashMap<u32, PreKey>,
    next_prekey: Option<u32>,
    sender_keys: HashMap<SenderKeyName, SenderKeyRecord>,
    seen: HashSet<DedupeKey>,
    sent: HashMap<String, SentRecord>,
    idempotency: HashMap<String, IdempotencyRecord>,
    lids: HashMap<String, String>,
    phone_lids: HashMap<String, String>,
    sender_key_memory: HashMap<String, SenderKeyMemory>,
    media: HashMap<String, MediaRecord>,
    history: HashMap<DedupeKey, PendingHistory>,
    app_state_keys: HashMap<Vec<u8>, crate::wa::appstate::SharedKey>,
    collections: HashMap<String, crate::wa::appstate::CollectionRecord>,
    contacts: HashMap<String, ContactRecord>,
    chats: HashMap<String, ChatRecord>,
    polls: HashMap<String, PollRecord>,
    /// Reads fail while set.
    broken: bool,
}

impl MemKeys {
    fn check(&self) -> Result<(), KeyError> {
        if self.broken {
            return Err(KeyError {
                message: "store down".into(),
                retryable: true,
            });
        }
        Ok(())
    }

    fn commit(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Session(a, r) => {
                    self.sessions.insert(a, *r);
                }
                Change::Prekey(k) => {
                    self.prekeys.insert(k.id, *k);
                }
                Change::PrekeyUsed(id) => {
                    self.prekeys.remove(&id);
                }
                Change::NextPrekeyId(n) => self.next_prekey = Some(n),
                Change::SenderKey(n, r) => {
                    self.sender_keys.insert(n, *r);
                }
                Change::Seen { key, .. } => {
                    self.seen.insert(key);
                }
                Change::Sent(id, r) => {
                    self.sent.insert(id, r);
                }
                Change::Idempotency(k, r) => {
                    self.idempotency.insert(k, r);
                }
                Change::Lid { lid_user, phone } => {
                    self.phone_lids.insert(phone.clone(), lid_user.clone());
                    self.lids.insert(lid_user, phone);
                }
                Change::SenderKeyMemory(group, r) => {
                    self.sender_key_memory.insert(group, r);
                }
                Change::Media(id, r) => {
                    self.media.insert(id, r);
                }
                Change::History(key, Some(r)) => {
                    self.history.insert(key, r);
                }
                Change::History(key, None) => {
                    self.history.remove(&key);
                }
                Change::AppStateKey(key) => {
                    self.app_state_keys.insert(key.id.clone(), key);
                }
                Change::AppStateCollection(name, r) => {
                    self.collections.insert(name, r);
                }
                Change::Contact(jid, r) => {
                    self.contacts.insert(jid, r);
                }
                Change::ChatSettings(chat, r) => {
                    self.chats.insert(chat, r);
                }
                Change::Poll(id, r) => {
                    self.polls.insert(id, r);
                }
            }
        }
    }
}

impl KeyStore for MemKeys {
    fn session(&mut self, a: &ProtocolAddress) -> Result<Option<SessionRecord>, KeyError> {
        self.check()?;
        Ok(self.sessions.get(a).cloned())
    }
    fn prekey(&mut self, id: u32) -> Result<Option<PreKey>, KeyError> {
        self.check()?;
        Ok(self.prekeys.get(&id).cloned())
    }
    fn next_prekey_id(&mut self) -> Result<u32, KeyError> {
        self.check()?;
        Ok(self.next_prekey.unwrap_or(1))
    }
    fn sender_key(&mut self, n: &SenderKeyName) -> Result<Option<SenderKeyRecord>, KeyError> {
        self.check()?;
        Ok(self.sender_keys.get(n).cloned())
    }
    fn seen(&mut self, key: &DedupeKey, _: u64) -> Result<bool, KeyError> {
        self.check()?;
        Ok(self.seen.contains(key))
    }
    fn sent(&mut self, id: &str) -> Result<Option<SentRecord>, KeyError> {
        self.check()?;
        Ok(self.sent.get(id).cloned())
    }
    fn idempotency(&mut self, key: &str) -> Result<Option<IdempotencyRecord>, KeyError> {
        self.check()?;
        Ok(self.idempotency.get(key).cloned())
    }
    fn phone_of_lid(&mut self, lid: &str) -> Result<Option<String>, KeyError> {
        self.check()?;
        Ok(self.lids.get(lid).cloned())
    }
    fn lid_of_phone(&mut self, phone: &str) -> Result<Option<String>, KeyError> {
        self.check()?;
        Ok(self.phone_lids.get(phone).cloned())
    }
    fn sender_key_memory(&mut self, group: &str) -> Result<Option<SenderKeyMemory>, KeyError> {
        self.check()?;
        Ok(self.sender_key_memory.get(group).cloned())
    }
    fn pending_history(&mut self, key: &DedupeKey) -> Result<Option<PendingHistory>, KeyError> {
        self.check()?;
        Ok(self.history.get(key).cloned())
    }
    fn app_state_key(
        &mut self,
        id: &[u8],
    ) -> Result<Option<crate::wa::appstate::SharedKey>, KeyError> {
        self.check()?;
        Ok(self.app_state_keys.get(id).cloned())
    }
    fn app_state_collection(
        &mut self,
        name: &str,
    ) -> Result<Option<crate::wa::appstate::CollectionRecord>, KeyError> {
        self.check()?;
        Ok(self.collections.get(name).cloned())
    }
    fn contact(&mut self, jid: &str) -> Result<Option<ContactRecord>, KeyError> {
        self.check()?;
        Ok(self.contacts.get(jid).cloned())
    }
    fn chat_settings(&mut self, chat: &str) -> Result<Option<ChatRecord>, KeyError> {
        self.check()?;
        Ok(self.chats.get(chat).cloned())
    }

    fn poll(&mut self, id: &str) -> Result<Option<PollRecord>, KeyError> {
        self.check()?;
        Ok(self.polls.get(id).cloned())
    }
}

/// One device: its engine, credentials and keys, and what reached it.
struct Device {
    engine: Engine,
    creds: Credentials,
    keys: MemKeys,
    events: Vec<Event>,
    replies: Vec<(ReplyTo, Result<Sent, SendError>)>,
    /// The replies that were to wait for their step's commit.
    after_commit: Vec<ReplyTo>,
    /// Every stanza it wrote, in order.
    wrote: Vec<Node>,
}

impl Device {
    fn new(phone: &str, seed: u8) -> Self {
        let mut rng = StdRng::seed_from_u64(u64::from(seed));
        let mut creds = Credentials::generate(&mut rng);
        creds.account = Some(Account {
            jid: format!("{phone}@s.whatsapp.net").parse().expect("jid"),
            lid: None,
            platform: "android".into(),
            business_name: None,
            signed_identity: vec![seed; 8],
            key_index: 0,
            primary_identity: [0; 32],
        });
        let mut keys = MemKeys::default();
        let prekey = PreKey::generate(1, &mut rng).expect("prekey");
        keys.prekeys.insert(1, prekey);
        keys.next_prekey = Some(2);
        Self {
            engine: Engine::new([seed; 32]),
            creds,
            keys,
            events: Vec::new(),
            replies: Vec::new(),
            after_commit: Vec::new(),
            wrote: Vec::new(),
        }
    }

    fn jid(&self) -> Jid {
        self.creds
            .account
            .as_ref()
            .map(|a| a.jid.clone())
            .expect("paired")
    }

    /// Commits the step the way the runtime does, then "writes" its stanzas.
    fn apply(&mut self, step: Step) -> Vec<Node> {
        self.replies.extend(step.replies);
        self.keys.commit(step.changes);
        self.events.extend(step.events);
        self.after_commit
            .extend(step.committed_replies.iter().map(|(to, _)| *to));
        self.replies.extend(step.committed_replies);
        self.wrote.extend(step.transmit.iter().cloned());
        step.transmit
    }

    /// Logs in the way the runtime does: the sends the keys hold as
    /// written but unacknowledged go to the engine, oldest first.
    fn login(&mut self, now: u64) -> Vec<Node> {
        let mut unacked: Vec<IdempotencyRecord> = self
            .keys
            .idempotency
            .values()
            .filter(|r| r.awaits_ack())
            .cloned()
            .collect();
        unacked.sort_by_key(|r| r.created_at_ms);
        let step = self
            .engine
            .handle_connected(unacked, &mut self.keys, &self.creds, now)
            .expect("step");
        self.apply(step)
    }

    fn stanzas(&mut self, nodes: Vec<Node>, now: u64) -> Vec<Node> {
        let step = self
            .engine
            .handle_stanzas(nodes, &mut self.keys, &self.creds, now)
            .expect("step");
        self.apply(step)
    }

    fn send(
        &mut self,
        to: &Jid,
        text: &str,
        key: Option<&str>,
        reply: ReplyTo,
        now: u64,
    ) -> Vec<Node> {
        let request = SendRequest {
            to: to.clone(),
            message: crate::wa::message::text_message(text),
            idempotency_key: key.map(str::to_owned),
            fingerprint: None,
        };
        let step = self
            .engine
            .handle_sends(vec![(request, reply)], &mut self.keys, &self.creds, now)
            .expect("step");
        self.apply(step)
    }

    /// Texts received from others.
    fn texts(&self) -> Vec<String> {
        self.message_texts(false)
    }

    /// Texts of the message events with `from_me` as given.
    fn message_texts(&self, from_me: bool) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.from_me == from_me => m.text.clone(),
                _ => None,
            })
            .collect()
    }
}

/// The chat server: routes between devices by phone number.
struct Server {
    devices: Vec<Device>,
    clock: u64,
    /// Message ids accepted per sending device, with the time given.
    accepted: HashMap<(String, String), u64>,
    /// Stanzas waiting for delivery: (device index, stanza).
    queue: VecDeque<(usize, Node)>,
    /// Drop acks to this device (an ack lost on the way).
    drop_acks_to: Option<usize>,
    /// Refuse this device's messages (an ack with an error, nothing
    /// routed).
    refuse_from: Option<usize>,
    /// Corrupt the next copy delivered to this device.
    corrupt_next_to: Option<usize>,
    /// Devices whose messages the server delivers from their LID (this
    /// LID user), with the phone number in `sender_pn`.
    lid_senders: HashMap<usize, String>,
}

const ALICE: usize = 0;
const BOB: usize = 1;

impl Server {
    fn new() -> Self {
        Self {
            devices: vec![Device::new("15550000001", 1), Device::new("15550000002", 2)],
            clock: 1_700_000_000_000,
            accepted: HashMap::new(),
            queue: VecDeque::new(),
            drop_acks_to: None,
            refuse_from: None,
            corrupt_next_to: None,
            lid_senders: HashMap::new(),
        }
    }

    fn index_of(&self, user: &str) -> Option<usize> {
        self.devices
            .iter()
            .position(|d| d.jid().user == user)
            .or_else(|| {
                self.lid_senders
                    .iter()
                    .find_map(|(i, lid)| (lid == user).then_some(*i))
            })
    }

    /// Handles what device `from` wrote; deliveries are queued.
    fn receive(&mut self, from: usize, nodes: Vec<Node>) {
        for node in nodes {
            match node.tag() {
                "iq" => {
                    let answer = self.answer_iq(&node);
                    self.queue.push_back((from, answer));
                }
                "message" => self.route(from, &node),
                "receipt" => self.forward_receipt(from, &node),
                _ => {}
            }
        }
    }

    fn answer_iq(&self, iq: &Node) -> Node {
        let id = iq.attr_string("id").expect("iq id");
        let result = Node::new("iq")
            .attr("type", "result")
            .attr("id", id)
            .attr("from", Jid::server_jid());
        if let Some(usync) = iq.child("usync") {
            let users = usync
                .child("list")
                .map(|l| l.child_nodes().to_vec())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|u| u.attr_jid("jid"))
                .filter(|jid| self.index_of(&jid.user).is_some())
                .map(|jid| {
                    Node::new("user")
                        .attr("jid", jid)
                        .children(vec![Node::new("devices")
                            .children(vec![Node::new("device-list")
                                .children(vec![Node::new("device").attr("id", "0")])])])
                })
                .collect();
            return result.children(vec![
                Node::new("usync").children(vec![Node::new("list").children(users)])
            ]);
        }
        if let Some(key) = iq.child("key") {
            let users = key
                .child_nodes()
                .iter()
                .filter_map(|u| u.attr_jid("jid"))
                .filter_map(|jid| Some((self.index_of(&jid.user)?, jid)))
                .map(|(i, jid)| self.bundle(i, jid))
                .collect();
            return result.children(vec![Node::new("list").children(users)]);
        }
        if iq.child("count").is_some() {
            return result.children(vec![Node::new("count").attr("value", "0")]);
        }
        result
    }

    fn bundle(&self, index: usize, jid: Jid) -> Node {
        let device = &self.devices[index];
        let creds = &device.creds;
        let spk = &creds.signed_prekey;
        let id3 = |id: u32| id.to_be_bytes()[1..].to_vec();
        let mut children = vec![
            Node::new("registration").bytes(creds.registration_id.to_be_bytes().to_vec()),
            Node::new("type").bytes(vec![5]),
            Node::new("identity").bytes(creds.identity_key.public.to_vec()),
            Node::new("skey").children(vec![
                Node::new("id").bytes(id3(spk.id)),
                Node::new("value").bytes(spk.key.public.to_vec()),
                Node::new("signature").bytes(spk.signature.to_vec()),
            ]),
        ];
        if let Some(prekey) = device.keys.prekeys.values().next() {
            children.push(Node::new("key").children(vec![
                Node::new("id").bytes(id3(prekey.id)),
                Node::new("value").bytes(prekey.key.public.to_vec()),
            ]));
        }
        Node::new("user").attr("jid", jid).children(children)
    }

    fn route(&mut self, from: usize, message: &Node) {
        let id = message.attr_string("id").expect("id");
        let sender = self.devices[from].jid();
        if self.refuse_from == Some(from) {
            let ack = Node::new("ack")
                .attr("class", "message")
                .attr("id", id)
                .attr("error", "479")
                .attr("from", sender.to_non_ad());
            self.queue.push_back((from, ack));
            return;
        }
        let key = (sender.to_string(), id.clone());
        // A resend answering a retry receipt reuses the id on purpose.
        let resend = message.attr_str("device_fanout") == Some("false");
        let t = match self.accepted.get(&key).filter(|_| !resend) {
            // WhatsApp's server: a repeated id from the same device is
            // acknowledged again and not routed.
            Some(t) => *t,
            None => {
                let t = self.clock / 1000;
                self.accepted.insert(key, t);
                let mut copies = Vec::new();
                if let Some(participants) = message.child("participants") {
                    for to in participants.children_by_tag("to") {
                        let jid = to.attr_jid("jid").expect("to jid");
                        let enc = to.child("enc").expect("enc").clone();
                        copies.push((jid, enc));
                    }
                } else {
                    let jid = message.attr_jid("to").expect("to");
                    let enc = message.child("enc").expect("enc").clone();
                    copies.push((jid, enc));
                }
                for (jid, mut enc) in copies {
                    let Some(target) = self.index_of(&jid.user) else {
                        continue;
                    };
                    if self.corrupt_next_to == Some(target) {
                        self.corrupt_next_to = None;
                        let mut bytes = enc.content_bytes().expect("ct").to_vec();
                        if let Some(last) = bytes.last_mut() {
                            *last ^= 0xff;
                        }
                        enc = Node::new("enc")
                            .attr("v", "2")
                            .attr("type", enc.attr_string("type").expect("type"))
                            .bytes(bytes);
                    }
                    let from = match self.lid_senders.get(&from) {
                        Some(lid) => Jid::new(lid.clone(), crate::wa::jid::LID_SERVER),
                        None => sender.to_non_ad(),
                    };
                    let mut copy = Node::new("message")
                        .attr("from", from.clone())
                        .attr("id", id.clone())
                        .attr("t", t.to_string())
                        .attr("type", "text")
                        .attr("notify", "Sender")
                        .children(vec![enc]);
                    if from.is_lid() {
                        copy.set_attr("sender_pn", sender.to_non_ad());
                    }
                    self.queue.push_back((target, copy));
                }
                t
            }
        };
        if self.drop_acks_to != Some(from) {
            let ack = Node::new("ack")
                .attr("class", "message")
                .attr("id", id)
                .attr("t", t.to_string())
                .attr("from", sender.to_non_ad());
            self.queue.push_back((from, ack));
        }
    }

    fn forward_receipt(&mut self, from: usize, receipt: &Node) {
        let Some(to) = receipt.attr_jid("to") else {
            return;
        };
        let Some(target) = self.index_of(&to.user) else {
            return;
        };
        let mut forwarded = receipt.clone();
        forwarded.set_attr("from", self.devices[from].jid().to_non_ad());
        forwarded.set_attr("t", (self.clock / 1000).to_string());
        self.queue.push_back((target, forwarded));
    }

    /// Delivers queued stanzas (one step per device per round) until
    /// nothing moves.
    fn run(&mut self) {
        for _ in 0..100 {
            if self.queue.is_empty() {
                return;
            }
            self.clock += 10;
            let mut batches: Vec<Vec<Node>> = vec![Vec::new(); self.devices.len()];
            while let Some((i, node)) = self.queue.pop_front() {
                batches[i].push(node);
            }
            for (i, batch) in batches.into_iter().enumerate() {
                if batch.is_empty() {
                    continue;
                }
                let now = self.clock;
                let out = self.devices[i].stanzas(batch, now);
                self.receive(i, out);
            }
        }
        panic!("the exchange did not settle");
    }

    fn send(&mut self, from: usize, to: usize, text: &str, key: Option<&str>, reply: ReplyTo) {
        let to = self.devices[to].jid().to_non_ad();
        let now = self.clock;
        let out = self.devices[from].send(&to, text, key, reply, now);
        self.receive(from, out);
    }

    fn reply(&self, device: usize, reply: ReplyTo) -> Option<&Result<Sent, SendError>> {
        self.devices[device]
            .replies
            .iter()
            .rev()
            .find(|(r, _)| *r == reply)
            .map(|(_, result)| result)
    }
}

#[test]
fn a_send_without_a_key_is_answered_only_with_its_event_committed() {
    let mut server = Server::new();
    server.send(ALICE, BOB, "no key", None, 1);
    server.send(ALICE, BOB, "with a key", Some("k1"), 2);
    server.run();
    assert_eq!(server.devices[BOB].texts(), vec!["no key", "with a key"]);
    assert!(matches!(server.reply(ALICE, 1), Some(Ok(_))));
    assert!(matches!(server.reply(ALICE, 2), Some(Ok(_))));
    // Nothing would write the first again to bring its event back, so its
    // caller waits for the commit that logs it; the second's record does.
    assert_eq!(server.devices[ALICE].after_commit, vec![1]);
    assert_eq!(
        server.devices[ALICE].message_texts(true),
        vec!["no key", "with a key"]
    );
}

#[test]
fn texts_both_ways_with_receipts() {
    let mut server = Server::new();
    server.send(ALICE, BOB, "hello bob", None, 1);
    server.run();
    assert_eq!(server.devices[BOB].texts(), vec!["hello bob"]);
    let sent = server
        .reply(ALICE, 1)
        .expect("answered")
        .as_ref()
        .expect("sent")
        .clone();
    assert!(sent.message_id.starts_with("3EB0"));
    // Bob's receipt reached Alice as a delivery event.
    assert!(server.devices[ALICE].events.iter().any(|e| matches!(
        e,
        Event::Receipt(r) if r.kind == ReceiptKind::Delivered && r.message_ids == vec![sent.message_id.clone()]
    )));
    // The second message in each direction uses the established sessions.
    server.send(BOB, ALICE, "hi alice", None, 1);
    server.send(ALICE, BOB, "again", None, 2);
    server.run();
    assert_eq!(server.devices[ALICE].texts(), vec!["hi alice"]);
    assert_eq!(server.devices[BOB].texts(), vec!["hello bob", "again"]);
    let ev = server.devices[BOB]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        })
        .expect("message");
    assert_eq!(ev.sender_phone.as_deref(), Some("15550000001"));
    assert_eq!(ev.push_name.as_deref(), Some("Sender"));
    assert!(!ev.from_me);
    // What each side sent shows as its own message events, after the acks.
    assert_eq!(
        server.devices[ALICE].message_texts(true),
        vec!["hello bob", "again"]
    );
    assert_eq!(server.devices[BOB].message_texts(true), vec!["hi alice"]);
    let own = server.devices[ALICE]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Message(m) if m.from_me => Some(m.clone()),
            _ => None,
        })
        .expect("own message");
    assert_eq!(own.id, sent.message_id);
    assert_eq!(own.chat.user, "15550000002");
}

#[test]
fn a_redelivered_message_is_receipted_again_but_reported_once() {
    let mut server = Server::new();
    server.send(ALICE, BOB, "once", None, 1);
    server.run();
    let first = server.devices[BOB].events.len();
    // The server redelivers the same stanza (its receipt was lost).
    let redelivery = Node::new("message")
        .attr("from", server.devices[ALICE].jid().to_non_ad())
        .attr(
            "id",
            server
                .reply(ALICE, 1)
                .and_then(|r| r.as_ref().ok())
                .expect("sent")
                .message_id
                .clone(),
        )
        .attr("t", "1")
        .attr("type", "text")
        .children(vec![Node::new("enc")
            .attr("v", "2")
            .attr("type", "msg")
            .bytes(vec![1, 2, 3])]);
    let now = server.clock;
    let out = server.devices[BOB].stanzas(vec![redelivery], now);
    assert_eq!(server.devices[BOB].events.len(), first, "no second event");
    assert!(out.iter().any(|n| n.tag() == "receipt"), "receipted again");
}

#[test]
fn an_undecryptable_message_is_asked_for_again_and_then_arrives() {
    let mut server = Server::new();
    server.send(ALICE, BOB, "first", None, 1);
    server.run();
    server.corrupt_next_to = Some(BOB);
    server.send(ALICE, BOB, "second", None, 2);
    server.run();
    // Bob asked for a resend, Alice answered from her stored copy, and the
    // text arrived once.
    assert!(server.devices[BOB]
        .wrote
        .iter()
        .any(|n| n.tag() == "receipt" && n.attr_str("type") == Some("retry")));
    assert!(server.devices[ALICE]
        .wrote
        .iter()
        .any(|n| n.tag() == "message" && n.attr_str("device_fanout") == Some("false")));
    assert_eq!(server.devices[BOB].texts(), vec!["first", "second"]);
}

#[test]
fn a_retried_send_writes_the_same_bytes_and_is_delivered_once() {
    let mut server = Server::new();
    server.drop_acks_to = Some(ALICE);
    server.send(ALICE, BOB, "exactly once", Some("order-1"), 1);
    server.run();
    // No ack: the caller gives up at the deadline.
    let late = server.clock + SEND_TIMEOUT_MS;
    let step = server.devices[ALICE].engine.handle_timeout(late);
    server.devices[ALICE].apply(step);
    assert!(matches!(
        server.reply(ALICE, 1),
        Some(Err(SendError::Timeout))
    ));
    let first: Vec<Node> = server.devices[ALICE]
        .wrote
        .iter()
        .filter(|n| n.tag() == "message")
        .cloned()
        .collect();
    assert_eq!(first.len(), 1);

    // The retry writes the stored stanza byte for byte.
    server.drop_acks_to = None;
    server.send(ALICE, BOB, "exactly once", Some("order-1"), 2);
    let written: Vec<&Node> = server.devices[ALICE]
        .wrote
        .iter()
        .filter(|n| n.tag() == "message")
        .collect();
    assert_eq!(written.len(), 2);
    assert_eq!(binary::encode(written[0]), binary::encode(written[1]));
    server.run();
    let retried = server
        .reply(ALICE, 2)
        .expect("answered")
        .as_ref()
        .expect("acked")
        .clone();
    assert_eq!(server.devices[BOB].texts(), vec!["exactly once"]);

    // Once acknowledged, a retry is answered without touching the wire.
    server.send(ALICE, BOB, "exactly once", Some("order-1"), 3);
    let again = server
        .reply(ALICE, 3)
        .expect("answered")
        .as_ref()
        .expect("sent");
    assert_eq!(again, &retried);
    assert_eq!(
        server.devices[ALICE]
            .wrote
            .iter()
            .filter(|n| n.tag() == "message")
            .count(),
        2
    );

    // The same key for another message is refused.
    server.send(ALICE, BOB, "something else", Some("order-1"), 4);
    assert!(matches!(
        server.reply(ALICE, 4),
        Some(Err(SendError::IdempotencyConflict(_)))
    ));
}

#[test]
fn a_send_cut_off_by_a_dropped_connection_is_retried_from_the_store() {
    let mut server = Server::new();
    server.drop_acks_to = Some(ALICE);
    server.send(ALICE, BOB, "across a restart", Some("k"), 1);
    server.run();
    let step = server.devices[ALICE]
        .engine
        .handle_disconnected("socket closed");
    server.devices[ALICE].apply(step);
    assert!(matches!(
        server.reply(ALICE, 1),
        Some(Err(SendError::ConnectionLost(_)))
    ));
    // A new process: a fresh engine over the same keys.
    server.devices[ALICE].engine = Engine::new([9; 32]);
    server.drop_acks_to = None;
    server.send(ALICE, BOB, "across a restart", Some("k"), 2);
    server.run();
    assert!(server.reply(ALICE, 2).expect("answered").is_ok());
    assert_eq!(server.devices[BOB].texts(), vec!["across a restart"]);
}

#[test]
fn a_send_left_unacknowledged_is_written_again_at_the_next_login() {
    let mut server = Server::new();
    server.drop_acks_to = Some(ALICE);
    server.send(ALICE, BOB, "no retry needed", Some("k"), 1);
    server.run();
    assert_eq!(server.devices[BOB].texts(), vec!["no retry needed"]);
    // The process ends before the ack: no event of the send, no retry.
    assert!(server.devices[ALICE].message_texts(true).is_empty());
    server.devices[ALICE].engine = Engine::new([9; 32]);
    server.drop_acks_to = None;
    let now = server.clock;
    let out = server.devices[ALICE].login(now);
    let resent = out.iter().filter(|n| n.tag() == "message").count();
    assert_eq!(resent, 1);
    server.receive(ALICE, out);
    server.run();
    // The server knew the id: acknowledged, not delivered again; the ack
    // brings the send's one event.
    assert_eq!(server.devices[BOB].texts(), vec!["no retry needed"]);
    assert_eq!(
        server.devices[ALICE].message_texts(true),
        vec!["no retry needed"]
    );
    // Acknowledged now: a later retry is answered from the record, and
    // the next login writes nothing again.
    let wrote = server.devices[ALICE].wrote.len();
    server.send(ALICE, BOB, "no retry needed", Some("k"), 2);
    assert!(server.reply(ALICE, 2).expect("answered").is_ok());
    assert_eq!(server.devices[ALICE].wrote.len(), wrote);
    server.devices[ALICE].engine = Engine::new([10; 32]);
    let now = server.clock;
    let out = server.devices[ALICE].login(now);
    assert!(out.iter().all(|n| n.tag() != "message"));
    assert_eq!(server.devices[ALICE].message_texts(true).len(), 1);
}

#[test]
fn a_send_committed_but_never_written_is_delivered_at_the_next_login() {
    let mut server = Server::new();
    // Devices known and sessions made by a first exchange.
    server.send(ALICE, BOB, "first", None, 1);
    server.run();
    let to = server.devices[BOB].jid().to_non_ad();
    let now = server.clock;
    // Committed, then the process ends before a byte reaches the wire.
    let lost = server.devices[ALICE].send(&to, "second", Some("k2"), 2, now);
    assert_eq!(lost.iter().filter(|n| n.tag() == "message").count(), 1);
    server.devices[ALICE].engine = Engine::new([9; 32]);
    let out = server.devices[ALICE].login(now + 1_000);
    server.receive(ALICE, out);
    // A caller retrying meanwhile waits for that same write.
    server.send(ALICE, BOB, "second", Some("k2"), 3);
    server.run();
    assert_eq!(server.devices[BOB].texts(), vec!["first", "second"]);
    assert!(server.reply(ALICE, 3).expect("answered").is_ok());
    assert_eq!(
        server.devices[ALICE].message_texts(true),
        vec!["first", "second"]
    );
}

#[test]
fn a_refused_send_is_not_written_again_at_the_next_login() {
    let mut server = Server::new();
    server.refuse_from = Some(ALICE);
    server.send(ALICE, BOB, "refused", Some("k"), 1);
    server.run();
    assert!(matches!(
        server.reply(ALICE, 1).expect("answered"),
        Err(SendError::Refused(code)) if code == "479"
    ));
    let first = server.devices[ALICE]
        .wrote
        .iter()
        .find(|n| n.tag() == "message")
        .cloned()
        .expect("written once");
    // The caller was told it failed: a login writes nothing of it again.
    server.refuse_from = None;
    server.devices[ALICE].engine = Engine::new([9; 32]);
    let now = server.clock;
    let out = server.devices[ALICE].login(now);
    assert!(out.iter().all(|n| n.tag() != "message"));
    server.receive(ALICE, out);
    server.run();
    assert!(server.devices[BOB].texts().is_empty());
    // A caller retrying with the key tries the same bytes again.
    server.send(ALICE, BOB, "refused", Some("k"), 2);
    server.run();
    assert!(server.reply(ALICE, 2).expect("answered").is_ok());
    let again: Vec<&Node> = server.devices[ALICE]
        .wrote
        .iter()
        .filter(|n| n.tag() == "message")
        .collect();
    assert_eq!(again.len(), 2);
    assert_eq!(binary::encode(again[1]), binary::encode(&first));
    assert_eq!(server.devices[BOB].texts(), vec!["refused"]);
}

#[test]
fn concurrent_retries_share_one_send() {
    let mut server = Server::new();
    let to = server.devices[BOB].jid();
    let now = server.clock;
    let request = |text: &str| SendRequest {
        to: to.clone(),
        message: crate::wa::message::text_message(text),
        idempotency_key: Some("dup".into()),
        fingerprint: None,
    };
    let device = &mut server.devices[ALICE];
    let step = device
        .engine
        .handle_sends(
            vec![(request("x"), 1), (request("x"), 2), (request("y"), 3)],
            &mut device.keys,
            &device.creds,
            now,
        )
        .expect("step");
    let out = device.apply(step);
    server.receive(ALICE, out);
    server.run();
    let one = server
        .reply(ALICE, 1)
        .expect("1")
        .as_ref()
        .expect("ok")
        .clone();
    let two = server
        .reply(ALICE, 2)
        .expect("2")
        .as_ref()
        .expect("ok")
        .clone();
    assert_eq!(one, two);
    assert!(matches!(
        server.reply(ALICE, 3),
        Some(Err(SendError::IdempotencyConflict(_)))
    ));
    assert_eq!(server.devices[BOB].texts(), vec!["x"]);
}

#[test]
fn unknown_recipients_and_refused_queries_fail_the_send() {
    let mut server = Server::new();
    let nobody: Jid = "15559999999@s.whatsapp.net".parse().expect("jid");
    let now = server.clock;
    let out = server.devices[ALICE].send(&nobody, "hi", None, 1, now);
    server.receive(ALICE, out);
    server.run();
    assert!(matches!(
        server.reply(ALICE, 1),
        Some(Err(SendError::UnknownRecipient(_)))
    ));

    // An error answer to the device query.
    let bob = server.devices[BOB].jid();
    let out = server.devices[ALICE].send(&bob, "hi", None, 2, now);
    let iq = out.iter().find(|n| n.tag() == "iq").expect("usync");
    let error = Node::new("iq")
        .attr("type", "error")
        .attr("id", iq.attr_string("id").expect("id"))
        .children(vec![Node::new("error").attr("code", "500")]);
    server.devices[ALICE].stanzas(vec![error], now);
    assert!(matches!(
        server.reply(ALICE, 2),
        Some(Err(SendError::Encryption(_)))
    ));
    assert_eq!(server.devices[ALICE].engine.poll_timeout(), None);
}

#[test]
fn unknown_groups_and_long_texts_are_refused_clearly() {
    let mut server = Server::new();
    let group: Jid = "120363000000000000@g.us".parse().expect("jid");
    let now = server.clock;
    // The group info query goes out; the server does not know the group.
    let out = server.devices[ALICE].send(&group, "hi", None, 1, now);
    let iq = out
        .iter()
        .find(|n| n.tag() == "iq" && n.attr_str("xmlns") == Some("w:g2"))
        .expect("group info query");
    let error = Node::new("iq")
        .attr("type", "error")
        .attr("id", iq.attr_string("id").expect("id"))
        .children(vec![Node::new("error").attr("code", "404")]);
    server.devices[ALICE].stanzas(vec![error], now);
    assert!(matches!(
        server.reply(ALICE, 1),
        Some(Err(SendError::UnknownGroup(_)))
    ));
    let bob = server.devices[BOB].jid();
    let long = "x".repeat(MAX_SEND_TEXT_BYTES + 1);
    server.devices[ALICE].send(&bob, &long, None, 2, now);
    assert!(matches!(
        server.reply(ALICE, 2),
        Some(Err(SendError::Unsupported(_)))
    ));
}

#[test]
fn a_low_prekey_stock_is_topped_up_after_login() {
    let mut server = Server::new();
    let now = server.clock;
    let out = server.devices[ALICE].login(now);
    server.receive(ALICE, out);
    server.run();
    let uploads = server.devices[ALICE]
        .wrote
        .iter()
        .filter(|n| n.tag() == "iq" && n.attr_str("type") == Some("set"))
        .count();
    assert_eq!(uploads, 1);
    // The uploaded keys were committed before the upload went out.
    assert!(server.devices[ALICE].keys.prekeys.len() > 30);
}

#[test]
fn a_store_failure_abandons_the_whole_step() {
    let mut server = Server::new();
    server.send(ALICE, BOB, "first", None, 1);
    server.run();
    server.send(ALICE, BOB, "second", None, 2);
    // Bob's store fails while his copy arrives: nothing is receipted.
    let (target, copy) = server
        .queue
        .iter()
        .find(|(i, n)| *i == BOB && n.tag() == "message")
        .cloned()
        .expect("copy for bob");
    server.devices[target].keys.broken = true;
    let now = server.clock;
    let device = &mut server.devices[target];
    let result = device
        .engine
        .handle_stanzas(vec![copy], &mut device.keys, &device.creds, now);
    assert!(result.is_err());
    // With the store back, the redelivery decrypts.
    server.devices[BOB].keys.broken = false;
    server.run();
    assert_eq!(server.devices[BOB].texts(), vec!["first", "second"]);
}

#[test]
fn hostile_stanzas_are_refused_without_panicking() {
    let mut device = Device::new("15550000001", 1);
    let nodes = vec![
        Node::new("message"),
        Node::new("message")
            .attr("id", "x")
            .attr("from", Jid::server_jid()),
        Node::new("receipt"),
        Node::new("iq").attr("id", "unknown").attr("type", "result"),
        Node::new("ack").attr("class", "message"),
        Node::new("message")
            .attr("id", "X1")
            .attr(
                "from",
                "15550000002@s.whatsapp.net".parse::<Jid>().expect("jid"),
            )
            .attr("t", "1")
            .children(vec![Node::new("enc")
                .attr("type", "pkmsg")
                .bytes(vec![0xff; 40])]),
    ];
    let out = device.stanzas(nodes, 1);
    // The last one asks for a resend; nothing is reported yet.
    assert!(out.iter().any(|n| n.attr_str("type") == Some("retry")));
    assert!(device.events.is_empty());
}

mod app_state;
mod lid;
mod media;

/// A `historySyncNotification` from our own phone, encrypted to `device`
/// as a `pkmsg` (a fresh session each time: only the first copy decrypts).
fn history_notification(device: &Device, id: &str) -> Node {
    use crate::proto::wa::message::history_sync_notification::HistorySyncType;
    use crate::proto::wa::message::protocol_message::Type;
    use crate::wa::history::HistoryNotice;
    use crate::wa::signal::PreKeyBundle;

    let mut rng = StdRng::seed_from_u64(99);
    let phone = crate::wa::crypto::KeyPair::generate(&mut rng);
    let prekey = device.keys.prekeys.get(&1).expect("prekey 1");
    let bundle = PreKeyBundle {
        registration_id: device.creds.registration_id,
        device_id: 0,
        pre_key: Some((prekey.id, prekey.key.public)),
        signed_pre_key: (
            device.creds.signed_prekey.id,
            device.creds.signed_prekey.key.public,
            device.creds.signed_prekey.signature,
        ),
        identity_key: device.creds.identity_key.public,
    };
    let mut record =
        crate::wa::signal::process_bundle(&bundle, &phone, 77, None, &mut rng).expect("bundle");
    let notice = HistoryNotice {
        direct_path: "/v/t62.1/history".into(),
        media_key: [5; 32],
        file_sha256: [6; 32],
        file_enc_sha256: None,
        file_length: 1000,
        sync_type: HistorySyncType::InitialBootstrap,
        chunk_order: 0,
        progress: 100,
    };
    let message = Message {
        protocol_message: Some(Box::new(crate::proto::wa::message::ProtocolMessage {
            r#type: Some(Type::HistorySyncNotification.into()),
            history_sync_notification: Some(notice.to_proto()),
            ..Default::default()
        })),
        ..Default::default()
    };
    let padded = crate::wa::signal::pad(&mut rng, &prost::Message::encode_to_vec(&message));
    let ct = crate::wa::signal::encrypt(&mut record, &phone, &padded).expect("encrypt");
    Node::new("message")
        .attr("from", device.jid().to_non_ad())
        .attr("id", id)
        .attr("t", "1700000000")
        .attr("type", "text")
        .children(vec![Node::new("enc")
            .attr("v", "2")
            .attr("type", ct.kind())
            .bytes(ct.bytes().to_vec())])
}

#[test]
fn a_history_notification_is_receipted_only_once_its_chunk_is_committed() {
    let mut device = Device::new("15550000009", 9);
    let stanza = history_notification(&device, "HN1");
    let receipts = |step: &Step| {
        step.transmit
            .iter()
            .filter(|n| n.tag() == "receipt")
            .count()
    };
    let handle = |device: &mut Device| {
        let step = device
            .engine
            .handle_stanzas(vec![stanza.clone()], &mut device.keys, &device.creds, 1)
            .expect("step");
        let receipted = receipts(&step) > 0;
        let jobs = step.history.clone();
        device.keys.commit(step.changes);
        (jobs, receipted)
    };

    // First delivery: a job to fetch, kept pending, no receipt yet.
    let (jobs, receipted) = handle(&mut device);
    assert!(!receipted);
    let [job] = jobs.as_slice() else {
        panic!("one job, got {jobs:?}")
    };
    assert_eq!(job.pages_done, 0);
    assert_eq!(job.notice.direct_path, "/v/t62.1/history");
    assert!(device.events.is_empty());

    // Redelivered before its pages were committed: the chunk resumes.
    let (jobs, receipted) = handle(&mut device);
    assert!(!receipted);
    assert_eq!(jobs.len(), 1);

    // Three pages committed: a redelivery resumes after them.
    device.keys.commit(vec![job.progress(3, false)]);
    let (jobs, receipted) = handle(&mut device);
    assert!(!receipted);
    assert_eq!(jobs.first().map(|j| j.pages_done), Some(3));

    // Complete: a redelivery is only receipted.
    device.keys.commit(vec![job.progress(4, true)]);
    let (jobs, receipted) = handle(&mut device);
    assert!(receipted);
    assert!(jobs.is_empty());
}
