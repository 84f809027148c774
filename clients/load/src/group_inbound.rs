//! Group texts received through the gateway: each session's peer phone
//! makes a group with the session's account and sends `skmsg`s to it; the
//! sessions read them as `message` events on one `Events` stream. Prints
//! messages per second with the CPU of each process.

use std::time::{Duration, Instant};

use crate::clients::{own_phone, peer_phone, Gateway, Sim};
use crate::error::LoadError;
use crate::inbound::{collect, subscribe, Meters, Pids, Throughput};
use crate::proto::sim::{CreateGroupRequest, SendGroupTextsRequest};
use crate::workers;

/// Virtual phones sending at once (one `SendGroupTexts` call each).
const SENDERS: usize = 64;

/// One group per session (its peer phone and its account), made by the
/// peer; then one text each, which hands the peer's sender key to the
/// session, unmeasured. Returns the groups, by session.
pub(crate) async fn prepare(
    gateway: &Gateway,
    sim: &Sim,
    sessions: usize,
    stall: Duration,
) -> Result<Vec<String>, LoadError> {
    let made = sim.clone();
    let mut groups: Vec<(usize, String)> = workers::run(sessions, SENDERS, move |n| {
        let mut sim = made.clone();
        async move {
            let group = sim
                .create_group(CreateGroupRequest {
                    phone: peer_phone(n),
                    subject: format!("Load {n}"),
                    participants: vec![own_phone(n)],
                    lid_addressed: false,
                })
                .await
                .map_err(LoadError::rpc("simulator CreateGroup"))?
                .into_inner()
                .group_jid;
            Ok((n, group))
        }
    })
    .await?;
    groups.sort();
    let groups: Vec<String> = groups.into_iter().map(|(_, g)| g).collect();
    send_all(gateway, sim, &groups, 1, "gwarm-", stall).await?;
    Ok(groups)
}

/// Every peer sends `per_session` texts to its group; the clock runs from
/// the first send to the last event.
pub(crate) async fn throughput(
    gateway: &Gateway,
    sim: &Sim,
    groups: &[String],
    per_session: u32,
    pids: Pids,
    stall: Duration,
) -> Result<Throughput, LoadError> {
    let meters = Meters::start(pids)?;
    let started = Instant::now();
    let total = send_all(gateway, sim, groups, per_session, "gin-", stall).await?;
    meters.throughput(total, started.elapsed().as_secs_f64())
}

/// `per_session` texts `<prefix><i>` to every group (one bulk call per
/// group, `SENDERS` groups at a time, as the one-to-one figure sends them),
/// until the stream showed them all. Returns how many.
async fn send_all(
    gateway: &Gateway,
    sim: &Sim,
    groups: &[String],
    per_session: u32,
    prefix: &'static str,
    stall: Duration,
) -> Result<usize, LoadError> {
    let total = groups.len() * per_session as usize;
    let mut stream = subscribe(gateway).await?;
    let sim = sim.clone();
    let groups = groups.to_vec();
    let senders = tokio::spawn(workers::run(groups.len(), SENDERS, move |n| {
        let mut sim = sim.clone();
        let request = SendGroupTextsRequest {
            from_phone: peer_phone(n),
            group_jid: groups[n].clone(),
            count: per_session,
            text_prefix: format!("{prefix}{n}-"),
        };
        async move {
            sim.send_group_texts(request)
                .await
                .map_err(LoadError::rpc("simulator SendGroupTexts"))?;
            Ok(())
        }
    }));
    collect(&mut stream, prefix, total, stall, |_| {}).await?;
    senders.await??;
    Ok(total)
}
