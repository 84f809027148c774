//! One wagate session sends to a large group: virtual phones with two
//! devices each (the phone and a never-online companion) plus the
//! session's own account. The first send distributes the session's sender
//! key pairwise to every device; the next ones are one `skmsg` for all.
//! Prints the latency of each (Send to the server's ack) and the stanza
//! sizes the simulator received, and checks that a member read them all.

use std::time::{Duration, Instant};

use crate::clients::{own_phone, session_id, Gateway, Sim};
use crate::error::LoadError;
use crate::procs::within;
use crate::proto::gateway::SendRequest;
use crate::proto::sim::{
    AddVirtualDeviceRequest, CreateAccountRequest, CreateGroupRequest, GroupInfoRequest,
    InboxRequest,
};
use crate::workers;

/// Group figures.
#[derive(Debug, Clone)]
pub(crate) struct GroupFigures {
    /// Virtual members (each with two devices), the session's account aside.
    pub(crate) members: usize,
    /// Devices the first message handed the sender key to.
    pub(crate) devices: usize,
    pub(crate) first_ms: f64,
    pub(crate) first_bytes: u64,
    pub(crate) steady_sends: usize,
    pub(crate) steady_p50_ms: f64,
    pub(crate) steady_p99_ms: f64,
    pub(crate) steady_bytes: u64,
}

/// The phone of virtual group member `n` (digits, no '+').
fn member_phone(n: usize) -> String {
    format!("1777{n:07}")
}

/// Builds the group (members created with their second device, session 0's
/// account in it), then times one first send and `steady` more, one at a
/// time.
pub(crate) async fn measure(
    gateway: &Gateway,
    sim: &Sim,
    members: usize,
    steady: usize,
    stall: Duration,
) -> Result<GroupFigures, LoadError> {
    let sim_for_members = sim.clone();
    workers::run(members, 16, move |n| {
        let mut sim = sim_for_members.clone();
        async move {
            let phone = member_phone(n);
            sim.create_account(CreateAccountRequest {
                phone: phone.clone(),
                push_name: format!("Member {n}"),
            })
            .await
            .map_err(LoadError::rpc("simulator CreateAccount"))?;
            sim.add_virtual_device(AddVirtualDeviceRequest { phone })
                .await
                .map_err(LoadError::rpc("simulator AddVirtualDevice"))?;
            Ok(())
        }
    })
    .await?;
    let mut sim = sim.clone();
    let group = sim
        .create_group(CreateGroupRequest {
            phone: member_phone(0),
            subject: "Load".into(),
            participants: (1..members)
                .map(member_phone)
                .chain(std::iter::once(own_phone(0)))
                .collect(),
            lid_addressed: false,
        })
        .await
        .map_err(LoadError::rpc("simulator CreateGroup"))?
        .into_inner()
        .group_jid;

    let mut gateway = gateway.clone();
    let mut texts = Vec::with_capacity(steady + 1);
    let mut millis = Vec::with_capacity(steady);
    let mut first = (0.0, 0);
    for i in 0..=steady {
        let text = format!("group {i}");
        let request = SendRequest {
            session_id: session_id(0),
            to: group.clone(),
            text: text.clone(),
            idempotency_key: format!("group-{group}-{i}"),
            ..Default::default()
        };
        let sent = Instant::now();
        within(stall, "a Send to the group", gateway.send(request))
            .await?
            .map_err(LoadError::rpc("gateway Send to the group"))?;
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        texts.push(text);
        if i == 0 {
            first = (ms, stanza_bytes(&mut sim, &group).await?);
        } else {
            millis.push(ms);
        }
    }
    let steady_bytes = if steady > 0 {
        stanza_bytes(&mut sim, &group).await?
    } else {
        0
    };
    read_by(&mut sim, &member_phone(members - 1), &group, &texts, stall).await?;
    millis.sort_by(f64::total_cmp);
    Ok(GroupFigures {
        members,
        // Every member's two devices and the session's own phone.
        devices: members * 2 + 1,
        first_ms: first.0,
        first_bytes: first.1,
        steady_sends: steady,
        steady_p50_ms: workers::percentile(&millis, 50.0).unwrap_or(0.0),
        steady_p99_ms: workers::percentile(&millis, 99.0).unwrap_or(0.0),
        steady_bytes,
    })
}

async fn stanza_bytes(sim: &mut Sim, group: &str) -> Result<u64, LoadError> {
    Ok(sim
        .group_info(GroupInfoRequest {
            group_jid: group.to_owned(),
        })
        .await
        .map_err(LoadError::rpc("simulator GroupInfo"))?
        .into_inner()
        .last_message_bytes)
}

/// Waits until the virtual phone of `phone` has read every text in the
/// group (the figures are worth nothing if the messages did not arrive).
async fn read_by(
    sim: &mut Sim,
    phone: &str,
    group: &str,
    texts: &[String],
    stall: Duration,
) -> Result<(), LoadError> {
    let deadline = Instant::now() + stall;
    let mut poll = Duration::from_millis(5);
    loop {
        let inbox = sim
            .inbox(InboxRequest {
                phone: phone.to_owned(),
            })
            .await
            .map_err(LoadError::rpc("simulator Inbox"))?
            .into_inner()
            .messages;
        let read = inbox.iter().filter(|m| m.chat == group).count();
        if read >= texts.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LoadError::Stalled {
                what: format!(
                    "member {phone} reading the group texts ({read} of {})",
                    texts.len()
                ),
                after: stall,
            });
        }
        // Polling the simulator's inbox: back off up to 100 ms per look.
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_millis(100));
    }
}
