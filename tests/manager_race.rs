//! The session registry under concurrent Init calls: one decision per lock,
//! so racing callers never start two actors for one session nor exceed the
//! session limit.

mod common;

use std::collections::BTreeSet;

use common::*;
use tonic::Code;
use wagate::proto::gateway::{InitRequest, ListSessionsRequest, SessionState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inits_respect_the_limit_with_one_actor_each() {
    const LIMIT: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.max_sessions = LIMIT;
    let gateway = start_gateway(opts).await;
    let client = client(gateway.addr).await;

    // 50 calls, 5 for each of 10 new ids, interleaved, all in flight at once.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let mut client = client.clone();
            let start = start.clone();
            let id = format!("racer-{}", i % 10);
            tokio::spawn(async move {
                start.wait().await;
                let result = client
                    .init(InitRequest {
                        session_id: id.clone(),
                        ..Default::default()
                    })
                    .await;
                (id, result.map(|r| r.into_inner()))
            })
        })
        .collect();
    let mut admitted = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for call in calls {
        let (id, result) = tokio::time::timeout(WAIT, call)
            .await
            .expect("Init answers in time")
            .expect("call task");
        match result {
            Ok(session) => {
                assert_eq!(session.session_id, id);
                admitted.insert(id);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{id}: {status}");
                refused.insert(id);
            }
        }
    }
    assert_eq!(admitted.len(), LIMIT, "admitted {admitted:?}");
    assert!(
        admitted.is_disjoint(&refused),
        "an id is either admitted for every call or refused for every call: {admitted:?} / {refused:?}"
    );
    assert_eq!(admitted.len() + refused.len(), 10);

    // Exactly the admitted sessions exist, each online, each with one actor.
    let sessions = client
        .clone()
        .list_sessions(ListSessionsRequest {})
        .await
        .expect("ListSessions")
        .into_inner()
        .sessions;
    let listed: BTreeSet<String> = sessions.iter().map(|s| s.session_id.clone()).collect();
    assert_eq!(listed, admitted);
    for s in &sessions {
        assert!(
            [SessionState::Connecting, SessionState::QrReady]
                .iter()
                .any(|state| *state as i32 == s.state),
            "{} is online: {:?}",
            s.session_id,
            s.state
        );
    }
    assert_eq!(gateway.manager.running_actors(), LIMIT);
    assert_eq!(gateway.manager.online_sessions(), LIMIT);

    // Still full: a new id is refused, an admitted one stays idempotent.
    let err = client
        .clone()
        .init(InitRequest {
            session_id: "late".into(),
            ..Default::default()
        })
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let again = admitted.iter().next().expect("one admitted").clone();
    client
        .clone()
        .init(InitRequest {
            session_id: again,
            ..Default::default()
        })
        .await
        .expect("idempotent");
    assert_eq!(gateway.manager.running_actors(), LIMIT);

    // Disconnecting one frees its place for a new session.
    let freed = admitted.iter().next().expect("one admitted").clone();
    client
        .clone()
        .disconnect(wagate::proto::gateway::DisconnectRequest {
            session_id: freed,
            logout: false,
        })
        .await
        .expect("Disconnect");
    client
        .clone()
        .init(InitRequest {
            session_id: "late".into(),
            ..Default::default()
        })
        .await
        .expect("a freed place is taken");
    assert_eq!(gateway.manager.online_sessions(), LIMIT);
    assert_eq!(gateway.manager.running_actors(), LIMIT + 1);

    tokio::time::timeout(WAIT, gateway.shutdown())
        .await
        .expect("shutdown in time");
}
