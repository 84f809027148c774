//! The simulator as a load source: `SendTexts` sends many texts from one
//! virtual phone, each really encrypted, and they reach a paired gateway
//! session in order; requests beyond the bound are refused.

mod common;

use common::*;
use wagate::proto::sim::{CreateAccountRequest, SendTextsRequest};

const OWN: &str = "+15550003333";
const BOB: &str = "+15550004444";

fn texts(count: u32, prefix: &str, per_second: u32) -> SendTextsRequest {
    SendTextsRequest {
        from_phone: BOB.into(),
        to: OWN.into(),
        count,
        text_prefix: prefix.into(),
        per_second,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_texts_reach_a_paired_session_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "load", OWN).await;
    sim.control
        .create_account(CreateAccountRequest {
            phone: BOB.into(),
            push_name: "Bob".into(),
        })
        .await
        .expect("CreateAccount");

    const COUNT: u32 = 40;
    let ids = sim
        .control
        .send_texts(texts(COUNT, "load-", 0))
        .await
        .expect("SendTexts")
        .into_inner()
        .message_ids;
    assert_eq!(ids.len(), COUNT as usize);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "every text has its own id");

    let mut received = Vec::new();
    while received.len() < ids.len() {
        let (event, _) =
            wait_for(&mut events, "a message event", |e| message_of(e).is_some()).await;
        let message = message_of(&event).expect("message");
        received.push((message.id.clone(), message.text.clone()));
    }
    let expected: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), format!("load-{n}")))
        .collect();
    assert_eq!(received, expected, "delivered once each, in order");

    // Paced: the same path, a few texts at a bounded rate.
    let paced = sim
        .control
        .send_texts(texts(3, "paced-", 1000))
        .await
        .expect("paced SendTexts")
        .into_inner()
        .message_ids;
    for (n, id) in paced.iter().enumerate() {
        let (event, _) = wait_for(&mut events, "a paced text", |e| {
            message_of(e).is_some_and(|m| m.id == *id)
        })
        .await;
        assert_eq!(
            message_of(&event).expect("message").text,
            format!("paced-{n}")
        );
    }

    let too_many = sim
        .control
        .send_texts(texts(wagate::sim::MAX_BULK_TEXTS + 1, "x", 0))
        .await
        .expect_err("over the bound");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    let unknown = sim
        .control
        .send_texts(SendTextsRequest {
            from_phone: "+15550009999".into(),
            ..texts(1, "x", 0)
        })
        .await
        .expect_err("unknown sender");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    gateway.shutdown().await;
    sim.sim.shutdown().await;
}
