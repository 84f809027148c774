//! Locations, contact cards, polls and votes through the simulator, each
//! way: between two wagate sessions (Ann and Bob), and between a session
//! and a virtual phone (Cy) that sends them through its control RPCs and
//! shows in its inbox what it received, decoded. A vote is sealed with its
//! poll's secret, which survives a restart of the gateway. In a group, a
//! poll and the votes on it (the poll's author named by the vote) work
//! between sessions too, and a member's phone shows both decoded. Bad
//! requests are refused with the field named.

mod common;

use common::*;
use tonic::transport::Channel;
use wagate::proto::gateway::send_request::{Action, Content};
use wagate::proto::gateway::{
    ContactCard, Contacts, Event, Location, MessageEvent, MessageRef, Poll, PollVote, SendRequest,
    SessionState,
};
use wagate::proto::sim;
use wagate::proto::sim::inbox_message::Content as InboxContent;
use wagate::proto::sim::simulator_client::SimulatorClient;

const ANN: &str = "+15550002001";
const BOB: &str = "+15550002002";
const CY: &str = "+15550002003";
const CY_JID: &str = "15550002003@s.whatsapp.net";

fn to(session: &str, peer: &str) -> SendRequest {
    SendRequest {
        session_id: session.into(),
        to: peer.into(),
        ..Default::default()
    }
}

fn card(name: &str) -> ContactCard {
    ContactCard {
        display_name: name.into(),
        vcard: format!(
            "BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nTEL;type=CELL;waid=15550009999:+1 555 000 9999\nEND:VCARD"
        ),
    }
}

fn lunch_poll(selectable: u32) -> Poll {
    Poll {
        name: "Lunch?".into(),
        options: vec!["pizza".into(), "salad".into(), "soup".into()],
        selectable_count: selectable,
    }
}

fn poll_ref(id: &str, from_me: bool) -> MessageRef {
    MessageRef {
        id: id.into(),
        from_me,
        sender: String::new(),
    }
}

/// The message event with id `id` (skipping everything else).
async fn message_with_id(events: &mut tonic::Streaming<Event>, id: &str) -> MessageEvent {
    let (event, _) = wait_for(events, &format!("message {id}"), |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    message_of(&event).expect("message").clone()
}

/// What Cy's phone shows of message `id`, once Cy's delivery receipt for
/// it reached the sender.
async fn cy_received(
    control: &mut SimulatorClient<Channel>,
    sender_events: &mut tonic::Streaming<Event>,
    id: &str,
) -> InboxContent {
    delivered_to(sender_events, id, &["15550002003"]).await;
    inbox(control, CY)
        .await
        .into_iter()
        .find(|m| m.id == id)
        .and_then(|m| m.content)
        .expect("Cy's inbox shows the content")
}

async fn send(
    client: &mut wagate::proto::gateway::gateway_client::GatewayClient<Channel>,
    req: SendRequest,
) -> String {
    client
        .send(req)
        .await
        .expect("send")
        .into_inner()
        .message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_cards_polls_and_votes_arrive_decoded_both_ways() {
    let mut sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(running.addr).await;
    let (_, mut ann) = pair_with(&mut sim.control, &mut client, "ann", ANN).await;
    let (_, mut bob) = pair_with(&mut sim.control, &mut client, "bob", BOB).await;
    create_account(&mut sim.control, CY, "Cy").await;

    // A location, Ann to Bob; Ann's own copy says the same.
    let place = Location {
        latitude: 48.858_37,
        longitude: 2.294_481,
        name: "Tour Eiffel".into(),
        address: "Champ de Mars, Paris".into(),
        url: "https://example.org/eiffel".into(),
        ..Default::default()
    };
    let id = send(
        &mut client,
        SendRequest {
            content: Some(Content::Location(place.clone())),
            ..to("ann", BOB)
        },
    )
    .await;
    let got = message_with_id(&mut bob, &id).await;
    assert_eq!(got.r#type, "locationMessage");
    assert_eq!(got.location.as_ref(), Some(&place));
    let own = message_with_id(&mut ann, &id).await;
    assert!(own.from_me);
    assert_eq!(own.location.as_ref(), Some(&place));

    // ... Ann to Cy's phone, and Cy's to Ann.
    let id = send(
        &mut client,
        SendRequest {
            content: Some(Content::Location(place.clone())),
            ..to("ann", CY)
        },
    )
    .await;
    let Some(InboxContent::Location(seen)) =
        Some(cy_received(&mut sim.control, &mut ann, &id).await)
    else {
        panic!("Cy sees a location");
    };
    assert_eq!(
        (seen.latitude, seen.longitude, seen.name.as_str()),
        (place.latitude, place.longitude, "Tour Eiffel")
    );
    let cy_place = sim::Location {
        latitude: -33.856_784,
        longitude: 151.215_297,
        name: "Opera House".into(),
        address: "Sydney".into(),
        ..Default::default()
    };
    let id = sim
        .control
        .send_location(sim::SendLocationRequest {
            from_phone: CY.into(),
            to: ANN.into(),
            location: Some(cy_place.clone()),
        })
        .await
        .expect("SendLocation")
        .into_inner()
        .message_id;
    let got = message_with_id(&mut ann, &id).await;
    assert_eq!(
        (got.r#type.as_str(), got.sender_phone.as_str()),
        ("locationMessage", "15550002003")
    );
    let l = got.location.expect("location");
    assert_eq!(
        (l.latitude, l.longitude, l.name.as_str(), l.address.as_str()),
        (
            cy_place.latitude,
            cy_place.longitude,
            "Opera House",
            "Sydney"
        )
    );

    // Contact cards: one from Ann to Bob, two from Ann to Cy, two from Cy.
    let id = send(
        &mut client,
        SendRequest {
            content: Some(Content::Contacts(Contacts {
                display_name: String::new(),
                cards: vec![card("Dee")],
            })),
            ..to("ann", BOB)
        },
    )
    .await;
    let got = message_with_id(&mut bob, &id).await;
    assert_eq!(got.r#type, "contactMessage");
    assert_eq!(got.contacts.map(|c| c.cards), Some(vec![card("Dee")]));
    let id = send(
        &mut client,
        SendRequest {
            content: Some(Content::Contacts(Contacts {
                display_name: "Dee and Eve".into(),
                cards: vec![card("Dee"), card("Eve")],
            })),
            ..to("ann", CY)
        },
    )
    .await;
    let Some(InboxContent::Contacts(seen)) =
        Some(cy_received(&mut sim.control, &mut ann, &id).await)
    else {
        panic!("Cy sees cards");
    };
    assert_eq!(seen.display_name, "Dee and Eve");
    assert_eq!(
        seen.cards
            .iter()
            .map(|c| (c.display_name.as_str(), c.vcard.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("Dee", card("Dee").vcard.as_str()),
            ("Eve", card("Eve").vcard.as_str())
        ]
    );
    let id = sim
        .control
        .send_contacts(sim::SendContactsRequest {
            from_phone: CY.into(),
            to: ANN.into(),
            contacts: Some(sim::Contacts {
                display_name: "Two friends".into(),
                cards: vec![
                    sim::ContactCard {
                        display_name: "Fay".into(),
                        vcard: card("Fay").vcard,
                    },
                    sim::ContactCard {
                        display_name: "Gus".into(),
                        vcard: card("Gus").vcard,
                    },
                ],
            }),
        })
        .await
        .expect("SendContacts")
        .into_inner()
        .message_id;
    let got = message_with_id(&mut ann, &id).await;
    assert_eq!(got.r#type, "contactsArrayMessage");
    let cards = got.contacts.expect("cards");
    assert_eq!(cards.display_name, "Two friends");
    assert_eq!(cards.cards, vec![card("Fay"), card("Gus")]);

    // A poll from Ann to Bob; Bob votes; Ann reads the vote.
    let poll_id = send(
        &mut client,
        SendRequest {
            content: Some(Content::Poll(lunch_poll(0))),
            ..to("ann", BOB)
        },
    )
    .await;
    let got = message_with_id(&mut bob, &poll_id).await;
    assert_eq!(got.r#type, "poll");
    assert_eq!(got.poll.as_ref(), Some(&lunch_poll(0)));
    let vote_id = send(
        &mut client,
        SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(poll_ref(&poll_id, false)),
                options: vec!["soup".into(), "pizza".into()],
            })),
            ..to("bob", ANN)
        },
    )
    .await;
    let got = message_with_id(&mut ann, &vote_id).await;
    assert_eq!(got.r#type, "poll_vote");
    assert_eq!(got.error, "");
    let vote = got.poll_vote.expect("vote");
    assert_eq!(vote.options, vec!["pizza", "soup"], "in the poll's order");
    let on = vote.poll.expect("the poll");
    assert_eq!((on.id.as_str(), on.from_me), (poll_id.as_str(), true));
    assert_eq!(got.target.map(|t| t.id), Some(poll_id.clone()));
    let own = message_with_id(&mut bob, &vote_id).await;
    assert_eq!(
        own.poll_vote.map(|v| v.options),
        Some(vec!["pizza".to_owned(), "soup".to_owned()])
    );

    // A single-choice poll from Ann to Cy's phone; Cy votes on it.
    let cy_poll = send(
        &mut client,
        SendRequest {
            content: Some(Content::Poll(lunch_poll(1))),
            ..to("ann", CY)
        },
    )
    .await;
    let Some(InboxContent::Poll(seen)) =
        Some(cy_received(&mut sim.control, &mut ann, &cy_poll).await)
    else {
        panic!("Cy sees a poll");
    };
    assert_eq!((seen.name.as_str(), seen.selectable_count), ("Lunch?", 1));
    let vote_id = sim
        .control
        .send_poll_vote(sim::SendPollVoteRequest {
            from_phone: CY.into(),
            to: ANN.into(),
            vote: Some(sim::PollVote {
                poll_id: cy_poll.clone(),
                options: vec!["salad".into()],
                error: String::new(),
            }),
        })
        .await
        .expect("SendPollVote")
        .into_inner()
        .message_id;
    let got = message_with_id(&mut ann, &vote_id).await;
    assert_eq!(
        (got.r#type.as_str(), got.sender_phone.as_str()),
        ("poll_vote", "15550002003")
    );
    assert_eq!(
        got.poll_vote
            .map(|v| (v.options, v.poll.map(|p| (p.id, p.from_me)))),
        Some((vec!["salad".to_owned()], Some((cy_poll.clone(), true))))
    );

    // Cy's poll to Ann survives a restart of the gateway: Ann votes after.
    let cy_own_poll = sim
        .control
        .send_poll(sim::SendPollRequest {
            from_phone: CY.into(),
            to: ANN.into(),
            poll: Some(sim::Poll {
                name: "Where?".into(),
                options: vec!["here".into(), "there".into()],
                selectable_count: 0,
            }),
        })
        .await
        .expect("SendPoll")
        .into_inner()
        .message_id;
    let (event, _) = wait_for(&mut ann, "Cy's poll", |e| {
        message_of(e).is_some_and(|m| m.id == cy_own_poll)
    })
    .await;
    let got = message_of(&event).expect("message").clone();
    assert_eq!(got.r#type, "poll");
    assert_eq!(
        got.poll.map(|p| (p.name, p.options)),
        Some((
            "Where?".to_owned(),
            vec!["here".to_owned(), "there".to_owned()]
        ))
    );
    drop((ann, bob));
    running.shutdown().await;
    let running = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(running.addr).await;
    let mut ann = events_after(&mut client, "ann", event.cursor).await;
    wait_for(&mut ann, "CONNECTED after restart", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    let vote_id = send(
        &mut client,
        SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(MessageRef {
                    id: cy_own_poll.clone(),
                    from_me: false,
                    sender: CY_JID.into(),
                }),
                options: vec!["there".into(), "here".into()],
            })),
            ..to("ann", CY)
        },
    )
    .await;
    let Some(InboxContent::PollVote(seen)) =
        Some(cy_received(&mut sim.control, &mut ann, &vote_id).await)
    else {
        panic!("Cy sees a vote");
    };
    assert_eq!(seen.error, "");
    assert_eq!(
        (seen.poll_id.as_str(), seen.options.clone()),
        (
            cy_own_poll.as_str(),
            vec!["here".to_owned(), "there".to_owned()]
        )
    );

    // Votes the poll does not allow are refused before anything is sent.
    let e = client
        .send(SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(poll_ref(&cy_poll, true)),
                options: vec!["pizza".into(), "soup".into()],
            })),
            ..to("ann", CY)
        })
        .await
        .expect_err("two options on a single-choice poll");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    let e = client
        .send(SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(poll_ref(&cy_poll, true)),
                options: vec!["burger".into()],
            })),
            ..to("ann", CY)
        })
        .await
        .expect_err("an option the poll lacks");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    let e = client
        .send(SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(poll_ref("3EB0000000000000000000", false)),
                options: vec!["pizza".into()],
            })),
            ..to("ann", CY)
        })
        .await
        .expect_err("a poll never seen");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("unknown"), "{}", e.message());
    // A vote Cy's phone sends on a poll Ann never saw arrives with why.
    let bob_poll_for_cy = sim
        .control
        .send_poll(sim::SendPollRequest {
            from_phone: CY.into(),
            to: BOB.into(),
            poll: Some(lunch_poll_sim()),
        })
        .await
        .expect("SendPoll")
        .into_inner()
        .message_id;
    let e = sim
        .control
        .send_poll_vote(sim::SendPollVoteRequest {
            from_phone: CY.into(),
            to: ANN.into(),
            vote: Some(sim::PollVote {
                poll_id: bob_poll_for_cy.clone(),
                options: vec!["pizza".into()],
                error: String::new(),
            }),
        })
        .await
        .expect("Cy votes in the wrong chat")
        .into_inner()
        .message_id;
    let got = message_with_id(&mut ann, &e).await;
    assert_eq!(
        (got.id.as_str(), got.r#type.as_str()),
        (e.as_str(), "poll_vote")
    );
    assert!(got.error.contains("unknown"), "{}", got.error);
    assert_eq!(got.poll_vote.map(|v| v.options), Some(Vec::new()));
    assert_eq!(got.chat, CY_JID);

    running.shutdown().await;
}

fn lunch_poll_sim() -> sim::Poll {
    let p = lunch_poll(0);
    sim::Poll {
        name: p.name,
        options: p.options,
        selectable_count: p.selectable_count,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_content_is_refused_with_the_field_named() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(running.addr).await;
    let poll = |name: &str, options: &[&str], selectable: u32| {
        Content::Poll(Poll {
            name: name.into(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
            selectable_count: selectable,
        })
    };
    let place = |latitude: f64, longitude: f64| {
        Content::Location(Location {
            latitude,
            longitude,
            ..Default::default()
        })
    };
    let thirteen: Vec<String> = (0..13).map(|n| format!("option {n}")).collect();
    let thirteen: Vec<&str> = thirteen.iter().map(String::as_str).collect();
    let huge = ContactCard {
        display_name: "Big".into(),
        vcard: format!("BEGIN:VCARD\nNOTE:{}\nEND:VCARD", "x".repeat(70_000)),
    };
    let cases: Vec<(Content, &str, &str)> = vec![
        (poll("Lunch?", &[], 0), "poll.options", "at least 2"),
        (poll("", &["a", "b"], 0), "poll.name", "empty"),
        (poll("Lunch?", &thirteen, 0), "poll.options", "at most 12"),
        (poll("Lunch?", &["a", "b", "a"], 0), "poll.options", "twice"),
        (
            poll("Lunch?", &["a", "b"], 3),
            "poll.selectable_count",
            "out of range",
        ),
        (place(90.5, 0.0), "location.latitude", "latitude"),
        (place(0.0, -180.5), "location.longitude", "longitude"),
        (place(f64::NAN, 0.0), "location.latitude", "latitude"),
        (
            Content::Contacts(Contacts {
                display_name: String::new(),
                cards: vec![huge],
            }),
            "contacts.cards[0].vcard",
            "at most 65536 bytes",
        ),
        (
            Content::Contacts(Contacts {
                display_name: String::new(),
                cards: vec![ContactCard {
                    display_name: "Nobody".into(),
                    vcard: "FN:Nobody".into(),
                }],
            }),
            "contacts.cards[0].vcard",
            "BEGIN:VCARD",
        ),
        (
            Content::Contacts(Contacts::default()),
            "contacts.cards",
            "no card",
        ),
    ];
    for (content, field, says) in cases {
        let e = client
            .send(SendRequest {
                content: Some(content),
                ..to("nobody", BOB)
            })
            .await
            .expect_err(field);
        assert_eq!(
            e.code(),
            tonic::Code::InvalidArgument,
            "{field}: {}",
            e.message()
        );
        assert!(
            e.message().starts_with(&format!("{field}:")) && e.message().contains(says),
            "{field}: {}",
            e.message()
        );
    }
    // Content goes alone.
    let e = client
        .send(SendRequest {
            text: "and a text".into(),
            content: Some(place(1.0, 1.0)),
            ..to("nobody", BOB)
        })
        .await
        .expect_err("text with a location");
    assert!(e.message().starts_with("text:"), "{}", e.message());
    let e = client
        .send(SendRequest {
            reply_to: Some(poll_ref("X", false)),
            content: Some(place(1.0, 1.0)),
            ..to("nobody", BOB)
        })
        .await
        .expect_err("a reply with a location");
    assert!(e.message().starts_with("content:"), "{}", e.message());
    let e = client
        .send(SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(poll_ref("X", false)),
                options: vec!["a".into(), "a".into()],
            })),
            ..to("nobody", BOB)
        })
        .await
        .expect_err("a vote naming an option twice");
    assert!(
        e.message().starts_with("poll_vote.options:"),
        "{}",
        e.message()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_poll_and_its_votes_between_sessions() {
    use wagate::proto::gateway::CreateGroupRequest;
    const DEE: &str = "+15550002011";
    const EVE: &str = "+15550002012";
    const FAY: &str = "+15550002013";
    const DEE_JID: &str = "15550002011@s.whatsapp.net";
    let mut sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(running.addr).await;
    let (_, mut dee) = pair_with(&mut sim.control, &mut client, "dee", DEE).await;
    let (_, mut eve) = pair_with(&mut sim.control, &mut client, "eve", EVE).await;
    create_account(&mut sim.control, FAY, "Fay").await;
    let group = client
        .create_group(CreateGroupRequest {
            session_id: "dee".into(),
            subject: "Lunch club".into(),
            participants: vec![EVE.into(), FAY.into()],
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .jid;

    let poll_id = send(
        &mut client,
        SendRequest {
            content: Some(Content::Poll(lunch_poll(2))),
            ..to("dee", &group)
        },
    )
    .await;
    let got = message_with_id(&mut eve, &poll_id).await;
    assert_eq!(
        (got.r#type.as_str(), got.chat.as_str()),
        ("poll", group.as_str())
    );
    assert_eq!(got.poll, Some(lunch_poll(2)));
    delivered_to(&mut dee, &poll_id, &["15550002013"]).await;
    let fay_sees = |inbox: Vec<sim::InboxMessage>, id: &str| {
        inbox
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| (m.chat, m.content))
    };
    let Some((chat, Some(InboxContent::Poll(seen)))) =
        fay_sees(inbox(&mut sim.control, FAY).await, &poll_id)
    else {
        panic!("Fay's phone shows the poll");
    };
    assert_eq!((chat.as_str(), seen.options.len()), (group.as_str(), 3));

    // Eve votes, naming the poll's author; Dee reads the vote.
    let vote = send(
        &mut client,
        SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(MessageRef {
                    id: poll_id.clone(),
                    from_me: false,
                    sender: DEE_JID.into(),
                }),
                options: vec!["salad".into(), "pizza".into()],
            })),
            ..to("eve", &group)
        },
    )
    .await;
    delivered_to(&mut eve, &vote, &["15550002013"]).await;
    let Some((_, Some(InboxContent::PollVote(seen)))) =
        fay_sees(inbox(&mut sim.control, FAY).await, &vote)
    else {
        panic!("Fay's phone shows Eve's vote");
    };
    assert_eq!(
        (
            seen.poll_id.as_str(),
            seen.options.clone(),
            seen.error.as_str()
        ),
        (
            poll_id.as_str(),
            vec!["pizza".to_owned(), "salad".to_owned()],
            ""
        )
    );
    let got = message_with_id(&mut dee, &vote).await;
    assert_eq!(
        (got.r#type.as_str(), got.chat.as_str()),
        ("poll_vote", group.as_str())
    );
    assert!(got.sender.starts_with("15550002012"), "{}", got.sender);
    let v = got.poll_vote.expect("vote");
    assert_eq!(v.options, vec!["pizza", "salad"]);
    assert_eq!(
        v.poll.map(|p| (p.id, p.from_me)),
        Some((poll_id.clone(), true))
    );

    // Dee votes on her own poll; Eve reads it with Dee as the poll's author.
    let vote = send(
        &mut client,
        SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(poll_ref(&poll_id, true)),
                options: vec!["soup".into()],
            })),
            ..to("dee", &group)
        },
    )
    .await;
    let got = message_with_id(&mut eve, &vote).await;
    let v = got.poll_vote.expect("vote");
    assert_eq!(v.options, vec!["soup"]);
    let on = v.poll.expect("the poll");
    assert_eq!(
        (on.id.as_str(), on.from_me, on.sender.as_str()),
        (poll_id.as_str(), false, DEE_JID)
    );

    // More options than the poll allows are refused.
    let e = client
        .send(SendRequest {
            action: Some(Action::PollVote(PollVote {
                poll: Some(poll_ref(&poll_id, true)),
                options: vec!["soup".into(), "salad".into(), "pizza".into()],
            })),
            ..to("dee", &group)
        })
        .await
        .expect_err("three options on a poll allowing two");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    running.shutdown().await;
}
