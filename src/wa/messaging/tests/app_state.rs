//! App-state sync in the engine, without sockets: a `server_sync` asks for
//! the collection after its stored version, patches are applied to the
//! stored chat settings (reported only when they change), the collection's
//! state is committed, and a patch that fails its MAC resets the collection
//! and syncs it from its start — once; a server repeating itself is not
//! asked again.

use super::*;
use crate::proto::wa::SyncdPatch;
use crate::wa::appstate::{
    encode_patch, sync_answer_collection, Action, CollectionState, MutationKeys, SharedKey,
    REGULAR_LOW,
};
use zeroize::Zeroizing;

const CHAT: &str = "15550001111@s.whatsapp.net";
const KEY_ID: &[u8] = b"\x00\x00\x00\x00\x01\x02";

/// The server's side of one collection: its patches, encoded once.
struct Server {
    keys: MutationKeys,
    state: CollectionState,
    patches: Vec<SyncdPatch>,
    rng: StdRng,
}

impl Server {
    fn change(&mut self, action: Action) {
        let patch = encode_patch(
            REGULAR_LOW,
            &mut self.state,
            KEY_ID,
            &self.keys,
            &[action.to_mutation(1)],
            &mut self.rng,
        )
        .expect("encoded");
        self.patches.push(patch);
    }

    fn answer(&self, id: &str, after: u64) -> Node {
        self.answer_more(id, after, false)
    }

    fn answer_more(&self, id: &str, after: u64, more: bool) -> Node {
        let from = usize::try_from(after).expect("small");
        let collection = sync_answer_collection(
            REGULAR_LOW,
            self.state.version,
            self.patches.get(from..).unwrap_or_default(),
        );
        let collection = if more {
            collection.attr("has_more_patches", "true")
        } else {
            collection
        };
        Node::new("iq")
            .attr("id", id.to_owned())
            .attr("type", "result")
            .children(vec![Node::new("sync").children(vec![collection])])
    }
}

fn feed(device: &mut Device, node: Node) -> Step {
    let step = device
        .engine
        .handle_stanzas(vec![node], &mut device.keys, &device.creds, 1_000)
        .expect("step");
    device.keys.commit(step.changes.clone());
    step
}

/// The sync iq the step sends: its id and the version it asks from.
fn sync_asked(step: &Step) -> Option<(String, u64)> {
    let iq = step
        .transmit
        .iter()
        .find(|n| n.attr_str("xmlns") == Some("w:sync:app:state"))?;
    let collection = iq.child("sync")?.child("collection")?;
    assert_eq!(collection.attr_str("name"), Some(REGULAR_LOW));
    Some((
        iq.attr_str("id")?.to_owned(),
        collection.attr_u64("version")?,
    ))
}

fn settings(step: &Step) -> Vec<&ChatSettings> {
    step.events
        .iter()
        .filter_map(|e| match e {
            Event::ChatSettings(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn server_sync() -> Node {
    Node::new("notification")
        .attr("id", "n1")
        .attr("type", "server_sync")
        .attr("from", "s.whatsapp.net")
        .children(vec![Node::new("collection").attr("name", REGULAR_LOW)])
}

#[test]
fn patches_apply_once_and_a_bad_mac_resyncs_from_the_start() {
    let mut device = Device::new("15550000001", 1);
    let key_data = [5u8; 32];
    // A key the phone shared before (as after a restart: only in the store).
    device.keys.app_state_keys.insert(
        KEY_ID.to_vec(),
        SharedKey {
            id: KEY_ID.to_vec(),
            data: Zeroizing::new(key_data.to_vec()),
        },
    );
    let mut server = Server {
        keys: MutationKeys::expand(&key_data),
        state: CollectionState::default(),
        patches: Vec::new(),
        rng: StdRng::seed_from_u64(9),
    };
    let chat = || CHAT.to_owned();
    server.change(Action::Archive {
        chat: chat(),
        archived: true,
    });
    server.change(Action::Pin {
        chat: chat(),
        pinned: true,
    });

    let step = feed(&mut device, server_sync());
    let (id, from) = sync_asked(&step).expect("a sync");
    assert_eq!(from, 0);
    assert!(step.transmit.iter().any(|n| n.tag() == "ack"));
    let step = feed(&mut device, server.answer(&id, from));
    let reported = settings(&step);
    assert_eq!(reported.len(), 2);
    assert!(reported[1].archived && reported[1].pinned && reported[1].chat.to_string() == CHAT);
    assert_eq!(device.keys.collections[REGULAR_LOW].version, 2);
    assert!(sync_asked(&step).is_none());

    // A server that repeats patches already applied and says there are
    // more is not asked again: nothing moved.
    let (id, _) = sync_asked(&feed(&mut device, server_sync())).expect("a sync");
    let step = feed(&mut device, server.answer_more(&id, 0, true));
    assert!(settings(&step).is_empty() && sync_asked(&step).is_none());
    assert_eq!(device.keys.collections[REGULAR_LOW].version, 2);

    // The next sync asks after the stored version.
    server.change(Action::Mute {
        chat: chat(),
        until_ms: Some(-1),
    });
    let step = feed(&mut device, server_sync());
    let (id, from) = sync_asked(&step).expect("a sync");
    assert_eq!(from, 2);
    // The patch arrives with a broken MAC: nothing of it is taken, the
    // collection is reset and asked for from its start.
    let mut tampered = server.patches[2].clone();
    if let Some(mac) = tampered.patch_mac.as_mut() {
        mac[0] ^= 1;
    }
    let good = std::mem::replace(&mut server.patches[2], tampered);
    let step = feed(&mut device, server.answer(&id, from));
    assert!(settings(&step).is_empty());
    assert_eq!(device.keys.collections[REGULAR_LOW].version, 0);
    let (id, from) = sync_asked(&step).expect("a resync");
    assert_eq!(from, 0);
    // From the start, with the good patch: only the mute is new.
    server.patches[2] = good;
    let step = feed(&mut device, server.answer(&id, from));
    let reported = settings(&step);
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].muted_until_ms, Some(-1));
    assert!(reported[0].archived && reported[0].pinned);
    assert_eq!(device.keys.collections[REGULAR_LOW].version, 3);
    assert!(sync_asked(&step).is_none());

    // A resync that fails again stops there (no loop); the next
    // server_sync tries once more.
    server.change(Action::Pin {
        chat: chat(),
        pinned: false,
    });
    let tampered = {
        let mut p = server.patches[3].clone();
        if let Some(mac) = p.snapshot_mac.as_mut() {
            mac[0] ^= 1;
        }
        p
    };
    let good = std::mem::replace(&mut server.patches[3], tampered);
    let (id, from) = sync_asked(&feed(&mut device, server_sync())).expect("a sync");
    let step = feed(&mut device, server.answer(&id, from));
    let (id, from) = sync_asked(&step).expect("a resync");
    assert_eq!(from, 0);
    let step = feed(&mut device, server.answer(&id, from));
    assert!(sync_asked(&step).is_none(), "no second resync");
    server.patches[3] = good;
    let (id, from) = sync_asked(&feed(&mut device, server_sync())).expect("a sync");
    assert_eq!(from, 0);
    let step = feed(&mut device, server.answer(&id, from));
    let reported = settings(&step);
    assert_eq!(reported.len(), 1);
    assert!(!reported[0].pinned && reported[0].archived);
    assert_eq!(device.keys.collections[REGULAR_LOW].version, 4);
}
