//! Arbitrary bytes as what messaging reads from the wire: a node that is
//! then read as a `<message>`, a `<receipt>` (with retry keys) and a server
//! ack, the same bytes as a decrypted `Message` payload (locations, cards,
//! polls and votes read from it), and as a sealed poll vote (IV and
//! payload) to open. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wagate::wa::binary::TokenDict;
use wagate::wa::content::{open_vote, MessageSecret, SealedVote};
use wagate::wa::jid::Jid;
use wagate::wa::message::{Content, IncomingMessage, IncomingReceipt, ServerAck};
use wagate::wa::prekeys::parse_retry_keys;

fuzz_target!(|data: &[u8]| {
    let _ = Content::decode(data);
    let _ = wagate::wa::signal::unpad(data).map(Content::decode);
    if let (Some(secret), Ok(voter)) = (
        MessageSecret::from_slice(&[7u8; 32]),
        "15550001111@s.whatsapp.net".parse::<Jid>(),
    ) {
        let vote = SealedVote {
            iv: data.get(..12).unwrap_or_default().to_vec(),
            payload: data.get(12..).unwrap_or_default().to_vec(),
        };
        let _ = open_vote(&secret, "3EB0AA", &voter, &voter, &vote);
    }
    if let Ok(node) = TokenDict::V3.decode(data) {
        if let Ok(message) = IncomingMessage::parse(&node) {
            let own = message.sender().clone();
            let _ = message.chat(&own);
            let _ = message.receipt(&own);
            let _ = message.retry_receipt(2, 7, None);
        }
        if let Ok(receipt) = IncomingReceipt::parse(&node) {
            let _ = receipt.ack();
        }
        let _ = parse_retry_keys(&node, 1);
        let _ = ServerAck::parse(&node);
    }
});
