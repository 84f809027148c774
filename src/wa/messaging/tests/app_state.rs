//! App-state sync in the engine, without sockets: a `server_sync` asks for
//! the collection after its stored version, patches are applied to the
//! stored chat settings (reported only when they change), the collection's
//! state is committed, and a patch that fails its MAC resets the collection
//! and syncs it from its start — once; a server repeating itself is not
//! asked again. A sync from the start asks for the snapshot; a snapshot the
//! server sends is handed to the owner to fetch, then checked and applied
//! before the patches after it, and one that fails resyncs as a patch does.

use super::*;
use crate::proto::wa::SyncdPatch;
use crate::wa::appstate::{
    current_records, encode_patch, encode_snapshot, sync_answer_collection,
    sync_answer_with_snapshot, Action, CollectionState, MutationKeys, SharedKey, REGULAR_LOW,
};
use prost::Message as _;
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
    // The snapshot is asked for exactly when syncing from the start.
    let from_start = collection.attr_u64("version") == Some(0);
    assert_eq!(
        collection.attr_str("return_snapshot"),
        Some(if from_start { "true" } else { "false" })
    );
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

/// A device holding the app-state key `[key_byte; 32]` (as the phone shared
/// it), and a server whose patches are sealed with it.
fn sharing_a_key(phone: &str, key_byte: u8, seed: u64) -> (Device, Server) {
    let mut device = Device::new(phone, 1);
    let key_data = [key_byte; 32];
    device.keys.app_state_keys.insert(
        KEY_ID.to_vec(),
        SharedKey {
            id: KEY_ID.to_vec(),
            data: Zeroizing::new(key_data.to_vec()),
        },
    );
    let server = Server {
        keys: MutationKeys::expand(&key_data),
        state: CollectionState::default(),
        patches: Vec::new(),
        rng: StdRng::seed_from_u64(seed),
    };
    (device, server)
}

#[test]
fn patches_apply_once_and_a_bad_mac_resyncs_from_the_start() {
    // A key the phone shared before (as after a restart: only in the store).
    let (mut device, mut server) = sharing_a_key("15550000001", 5, 9);
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

#[test]
fn a_snapshot_is_fetched_checked_and_applied_before_the_patches_after_it() {
    let (mut device, mut server) = sharing_a_key("15550000002", 6, 10);
    let chat = || CHAT.to_owned();
    server.change(Action::Archive {
        chat: chat(),
        archived: true,
    });
    server.change(Action::Pin {
        chat: chat(),
        pinned: true,
    });
    // The snapshot at version 2, then one patch after it.
    let snapshot = encode_snapshot(
        REGULAR_LOW,
        &server.state,
        current_records(&server.patches),
        KEY_ID,
        &server.keys,
    );
    server.change(Action::Mute {
        chat: chat(),
        until_ms: Some(-1),
    });
    let reference = crate::proto::wa::ExternalBlobReference {
        direct_path: Some("/mms/md-app-state/x".into()),
        ..Default::default()
    };
    let answer = |id: &str| {
        let collection = sync_answer_with_snapshot(
            REGULAR_LOW,
            server.state.version,
            Some(reference.encode_to_vec()),
            &server.patches[2..],
        );
        Node::new("iq")
            .attr("id", id.to_owned())
            .attr("type", "result")
            .children(vec![Node::new("sync").children(vec![collection])])
    };
    let snapshot_step = |device: &mut Device, job: SnapshotJob, blob: Result<Vec<u8>, String>| {
        let step = device
            .engine
            .handle_app_state_snapshot(job, blob, &mut device.keys, &device.creds, 1_000)
            .expect("step");
        device.keys.commit(step.changes.clone());
        step
    };

    let (id, from) = sync_asked(&feed(&mut device, server_sync())).expect("a sync");
    assert_eq!(from, 0);
    let mut step = feed(&mut device, answer(&id));
    assert!(settings(&step).is_empty(), "nothing before the snapshot");
    let job = step.app_state_snapshots.pop().expect("a snapshot to fetch");
    assert_eq!(job.collection, REGULAR_LOW);
    assert_eq!(job.reference, reference);
    assert_eq!(job.patches.len(), 1);
    // While it is fetched the collection is not asked for again.
    assert!(sync_asked(&feed(&mut device, server_sync())).is_none());

    // A snapshot that fails its MAC resets the collection and syncs it
    // from the start again, asking for the snapshot again.
    let mut tampered = snapshot.clone();
    if let Some(mac) = tampered.mac.as_mut() {
        mac[0] ^= 1;
    }
    let step = snapshot_step(&mut device, job.clone(), Ok(tampered.encode_to_vec()));
    assert!(settings(&step).is_empty());
    assert_eq!(device.keys.collections[REGULAR_LOW].version, 0);
    let (id, from) = sync_asked(&step).expect("a resync");
    assert_eq!(from, 0);
    let mut step = feed(&mut device, answer(&id));
    let job = step.app_state_snapshots.pop().expect("the snapshot again");

    // The good snapshot: its entries, then the patch after it.
    let step = snapshot_step(&mut device, job, Ok(snapshot.encode_to_vec()));
    let reported = settings(&step);
    let last = reported.last().expect("settings reported");
    assert!(last.archived && last.pinned, "{reported:?}");
    assert_eq!(last.muted_until_ms, Some(-1), "{reported:?}");
    assert_eq!(device.keys.collections[REGULAR_LOW].version, 3);
    assert!(sync_asked(&step).is_none(), "in step with the server");

    // A snapshot that cannot be fetched resyncs too, once: a second
    // failure waits for the next server_sync.
    let mut other = Device::new("15550000003", 1);
    other.keys.app_state_keys = device.keys.app_state_keys.clone();
    let (id, _) = sync_asked(&feed(&mut other, server_sync())).expect("a sync");
    let job = feed(&mut other, answer(&id))
        .app_state_snapshots
        .pop()
        .expect("a snapshot");
    let step = snapshot_step(&mut other, job, Err("gone".into()));
    let (id, from) = sync_asked(&step).expect("a resync");
    assert_eq!(from, 0);
    let job = feed(&mut other, answer(&id))
        .app_state_snapshots
        .pop()
        .expect("a snapshot");
    let step = snapshot_step(&mut other, job, Err("gone again".into()));
    assert!(sync_asked(&step).is_none(), "no loop");
    assert!(settings(&step).is_empty());
}
