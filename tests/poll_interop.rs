//! Votes sealed by wagate open with Baileys' `decryptPollVote` (the
//! function Baileys runs on every vote it receives), for random secrets,
//! poll ids and voters (device JIDs too: the seal names accounts).
//! The other direction (Baileys' vectors open here) is a unit test of
//! `wa::content`.

mod node_script;

use std::io::Write;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};
use wagate::proto::wa::{Message, MessageKey};
use wagate::wa::content::{option_hash, seal_vote_in, unsealed_vote, MessageSecret};
use wagate::wa::jid::Jid;

#[test]
fn baileys_opens_the_votes_wagate_seals() {
    let (mut child, mut stdin, lines) = node_script::spawn("poll-vote.js");
    let mut rng = StdRng::seed_from_u64(0x5017);
    let options = ["pizza", "salad", "soup", "¿tacos?"];
    for round in 0..8 {
        let secret = MessageSecret::generate(&mut rng);
        let poll_id = format!("3EB0{:018X}", rng.next_u64());
        let creator: Jid = format!("1555000{:04}@s.whatsapp.net", rng.gen_range(0..10_000))
            .parse()
            .expect("jid");
        let voter: Jid = format!(
            "1555111{:04}:{}@s.whatsapp.net",
            rng.gen_range(0..10_000),
            round % 3
        )
        .parse()
        .expect("jid");
        let chosen: Vec<String> = options
            .iter()
            .filter(|_| rng.gen_bool(0.5))
            .map(|o| (*o).to_owned())
            .collect();
        let key = MessageKey {
            remote_jid: Some(creator.to_string()),
            from_me: Some(false),
            id: Some(poll_id.clone()),
            participant: None,
        };
        let mut message: Message = unsealed_vote(key, &chosen, 1_700_000_000_000);
        seal_vote_in(&mut message, &secret, &creator, &voter, &mut rng);
        let vote = message
            .poll_update_message
            .and_then(|u| u.vote)
            .expect("a vote");
        let request = json!({
            "secret": hex::encode(secret.as_bytes()),
            "poll_id": poll_id,
            "creator": creator.to_non_ad().to_string(),
            "voter": voter.to_non_ad().to_string(),
            "payload": hex::encode(vote.enc_payload.expect("payload")),
            "iv": hex::encode(vote.enc_iv.expect("iv")),
        });
        writeln!(stdin, "{request}").expect("write to node");
        let answer: Value = serde_json::from_str(
            &lines
                .recv_timeout(Duration::from_secs(60))
                .expect("node answers"),
        )
        .expect("JSON answer");
        let expected: Vec<String> = chosen.iter().map(|o| hex::encode(option_hash(o))).collect();
        assert_eq!(
            answer["options"],
            json!(expected),
            "round {round}: {answer}"
        );
    }
    // A vote under another secret does not open there either.
    let other = MessageSecret::generate(&mut rng);
    let creator: Jid = "15550001111@s.whatsapp.net".parse().expect("jid");
    let voter: Jid = "15550002222@s.whatsapp.net".parse().expect("jid");
    let key = MessageKey {
        id: Some("3EB0AA".into()),
        ..Default::default()
    };
    let mut message = unsealed_vote(key, &["pizza".into()], 1);
    seal_vote_in(&mut message, &other, &creator, &voter, &mut rng);
    let vote = message
        .poll_update_message
        .and_then(|u| u.vote)
        .expect("vote");
    let request = json!({
        "secret": hex::encode([7u8; 32]),
        "poll_id": "3EB0AA",
        "creator": creator.to_string(),
        "voter": voter.to_string(),
        "payload": hex::encode(vote.enc_payload.expect("payload")),
        "iv": hex::encode(vote.enc_iv.expect("iv")),
    });
    writeln!(stdin, "{request}").expect("write to node");
    let answer: Value = serde_json::from_str(
        &lines
            .recv_timeout(Duration::from_secs(60))
            .expect("node answers"),
    )
    .expect("JSON answer");
    assert!(answer["error"].is_string(), "{answer}");
    drop(stdin);
    let _ = child.wait();
}
