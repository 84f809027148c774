use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;

/// Made by Baileys' own functions for fixed inputs
/// (`tests/interop/linkcode-gen-vectors.js`).
const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/linkcode/baileys.json"
));

fn vector(name: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(VECTORS).expect("vector file is valid JSON");
    hex::decode(v[name].as_str().expect("hex string")).expect("valid hex")
}

fn array<const N: usize>(name: &str) -> [u8; N] {
    vector(name).try_into().expect("vector length")
}

fn vector_code() -> LinkCode {
    let v: Value = serde_json::from_str(VECTORS).expect("vector file is valid JSON");
    v["code"]
        .as_str()
        .expect("code")
        .parse()
        .expect("valid code")
}

#[test]
fn code_from_bytes_matches_baileys() {
    let code = LinkCode::from_bytes(array("code_bytes"));
    assert_eq!(code, vector_code());
    assert_eq!(code.as_str(), "8T9HGJ3V");
    assert_eq!(code.display(), "8T9H-GJ3V");
    assert_eq!(LinkCode::from_bytes([0; 5]).as_str(), "11111111");
    assert_eq!(LinkCode::from_bytes([0xff; 5]).as_str(), "ZZZZZZZZ");
}

#[test]
fn code_parses_its_forms_and_refuses_others() {
    let code: LinkCode = "8T9H-GJ3V".parse().expect("dashed");
    assert_eq!(code.as_str(), "8T9HGJ3V");
    assert_eq!(" 8t9hgj3v ".parse::<LinkCode>(), Ok(code.clone()));
    for bad in [
        "",
        "8T9HGJ3",
        "8T9HGJ3VV",
        "8T9H_GJ3V",
        "8T9HGJ30",
        "8T9HGJ3O",
        "8T9HGJ3U",
        "8T9HGJ3I",
        "8T9-HGJ3V",
        "é1234567",
    ] {
        assert_eq!(
            bad.parse::<LinkCode>(),
            Err(LinkCodeError::Format),
            "{bad:?}"
        );
    }
    assert_eq!(format!("{code:?}"), "LinkCode(<redacted>)");
}

#[test]
fn wrapping_matches_baileys() {
    let code = vector_code();
    assert_eq!(
        code_key(&code, &vector("salt")).to_vec(),
        vector("code_key")
    );
    let private = array::<32>("companion_ephemeral_private");
    let pair = KeyPair::from_private(private);
    assert_eq!(pair.public.to_vec(), vector("companion_ephemeral_public"));
    let wrapped = wrap_ephemeral(&code, &pair.public, &array("salt"), &array("iv"));
    assert_eq!(wrapped.to_vec(), vector("wrapped_companion_ephemeral"));
    assert_eq!(unwrap_ephemeral(&code, &wrapped), Ok(pair.public));
}

#[test]
fn key_bundle_and_adv_secret_match_baileys() {
    let companion_ephemeral = KeyPair::from_private(array("companion_ephemeral_private"));
    let primary_ephemeral = KeyPair::from_private(array("primary_ephemeral_private"));
    let companion_identity = KeyPair::from_private(array("companion_identity_private"));
    let primary_identity = KeyPair::from_private(array("primary_identity_private"));
    let shared = companion_ephemeral.dh(&primary_ephemeral.public);
    assert_eq!(shared.to_vec(), vector("ephemeral_shared"));
    assert_eq!(*shared, *primary_ephemeral.dh(&companion_ephemeral.public));
    let bundle = KeyBundle {
        companion_identity: companion_identity.public,
        primary_identity: primary_identity.public,
        adv_random: Zeroizing::new(array("adv_random")),
    };
    let wrapped = wrap_key_bundle(
        &shared,
        &bundle,
        &array("bundle_salt"),
        &array("bundle_nonce"),
    );
    assert_eq!(wrapped, vector("wrapped_key_bundle"));
    assert_eq!(wrapped.len(), WRAPPED_BUNDLE_LEN);
    assert_eq!(unwrap_key_bundle(&shared, &wrapped), Ok(bundle.clone()));
    let secret = adv_secret(
        &shared,
        &companion_identity.dh(&primary_identity.public),
        &bundle.adv_random,
    );
    assert_eq!(secret.to_vec(), vector("adv_secret"));
    // The phone derives the same secret from its side of each exchange.
    let phone_side = adv_secret(
        &primary_ephemeral.dh(&companion_ephemeral.public),
        &primary_identity.dh(&companion_identity.public),
        &bundle.adv_random,
    );
    assert_eq!(*secret, *phone_side);
}

#[test]
fn bad_lengths_and_tampering_are_errors() {
    let code = vector_code();
    assert!(matches!(
        unwrap_ephemeral(&code, &[0; 79]),
        Err(LinkCodeError::Length { len: 79, .. })
    ));
    assert!(matches!(
        unwrap_ephemeral(&code, &[0; 81]),
        Err(LinkCodeError::Length { len: 81, .. })
    ));
    let shared: [u8; 32] = array("ephemeral_shared");
    let mut wrapped = vector("wrapped_key_bundle");
    assert!(matches!(
        unwrap_key_bundle(&shared, &wrapped[..WRAPPED_BUNDLE_LEN - 1]),
        Err(LinkCodeError::Length { .. })
    ));
    wrapped[60] ^= 1;
    assert_eq!(
        unwrap_key_bundle(&shared, &wrapped),
        Err(LinkCodeError::BundleDecrypt)
    );
}

/// The phone's part, as the simulator plays it: unwraps the companion's
/// key with the code it was given, answers with its own wrapped key.
fn phone_notification(
    hello: &Node,
    typed: &LinkCode,
    reference: &[u8],
    phone_identity: &KeyPair,
    phone_ephemeral: &KeyPair,
    rng: &mut StdRng,
) -> ([u8; 32], Node) {
    let reg = hello.child(REG_TAG).expect("reg");
    let wrapped = reg
        .child("link_code_pairing_wrapped_companion_ephemeral_pub")
        .and_then(Node::content_bytes)
        .expect("wrapped key");
    let companion_ephemeral = unwrap_ephemeral(typed, wrapped).expect("80 bytes");
    let shared = *phone_ephemeral.dh(&companion_ephemeral);
    let node = Node::new(REG_TAG).children(vec![
        Node::new("link_code_pairing_ref").bytes(reference.to_vec()),
        Node::new("primary_identity_pub").bytes(phone_identity.public.to_vec()),
        Node::new("link_code_pairing_wrapped_primary_ephemeral_pub")
            .bytes(wrap_ephemeral_random(typed, &phone_ephemeral.public, rng).to_vec()),
    ]);
    (shared, node)
}

fn reply_with_ref(reference: &[u8]) -> Node {
    Node::new("iq")
        .attr("type", "result")
        .children(vec![Node::new(REG_TAG)
            .children(vec![
                Node::new("link_code_pairing_ref").bytes(reference.to_vec())
            ])])
}

fn finish_bundle(finish: &Finish) -> Vec<u8> {
    finish
        .iq
        .child(REG_TAG)
        .and_then(|r| r.child("link_code_pairing_wrapped_key_bundle"))
        .and_then(Node::content_bytes)
        .expect("bundle")
        .to_vec()
}

#[test]
fn companion_and_phone_agree_on_the_adv_secret() {
    let mut rng = StdRng::seed_from_u64(21);
    let creds = Credentials::generate(&mut rng);
    let phone: PhoneNumber = "+15551230000".parse().expect("phone");
    let platform = CompanionPlatform {
        id: "1".into(),
        display: "Chrome (Linux)".into(),
    };
    let (request, hello) = LinkCodeRequest::start(&phone, &creds, &platform, &mut rng);
    let reg = hello.child(REG_TAG).expect("reg child");
    assert_eq!(reg.attr_str("stage"), Some("companion_hello"));
    assert_eq!(reg.attr_jid("jid"), Some(phone.to_jid()));
    assert_eq!(
        reg.child("companion_server_auth_key_pub")
            .and_then(Node::content_bytes),
        Some(creds.noise_key.public.as_slice())
    );
    assert_eq!(
        reg.child("companion_platform_display")
            .and_then(Node::content_str),
        Some("Chrome (Linux)")
    );
    let code = request.code().clone();
    let awaiting = request
        .handle_reply(&reply_with_ref(b"ref-1"))
        .expect("ref");

    let phone_identity = KeyPair::generate(&mut rng);
    let phone_ephemeral = KeyPair::generate(&mut rng);
    let (shared, notification) = phone_notification(
        &hello,
        &code,
        b"ref-1",
        &phone_identity,
        &phone_ephemeral,
        &mut rng,
    );
    let finish = awaiting
        .handle_notification(&notification, &creds, &mut rng)
        .expect("finish");
    let reg = finish.iq.child(REG_TAG).expect("reg");
    assert_eq!(reg.attr_str("stage"), Some("companion_finish"));
    let bundle = unwrap_key_bundle(&shared, &finish_bundle(&finish)).expect("opens");
    assert_eq!(bundle.companion_identity, creds.identity_key.public);
    assert_eq!(bundle.primary_identity, phone_identity.public);
    let phone_secret = adv_secret(
        &shared,
        &phone_identity.dh(&creds.identity_key.public),
        &bundle.adv_random,
    );
    assert_eq!(*phone_secret, *finish.adv_secret);

    // A wrong code typed on the phone: the companion still answers (it
    // cannot tell), but the phone cannot open the bundle.
    let wrong: LinkCode = if code.as_str() == "11111111" {
        "22222222"
    } else {
        "11111111"
    }
    .parse()
    .expect("code");
    let (shared, notification) = phone_notification(
        &hello,
        &wrong,
        b"ref-1",
        &phone_identity,
        &phone_ephemeral,
        &mut rng,
    );
    let finish = awaiting
        .handle_notification(&notification, &creds, &mut rng)
        .expect("finish");
    assert_eq!(
        unwrap_key_bundle(&shared, &finish_bundle(&finish)),
        Err(LinkCodeError::BundleDecrypt)
    );
}

#[test]
fn refusals_and_bad_notifications_are_errors() {
    let mut rng = StdRng::seed_from_u64(22);
    let creds = Credentials::generate(&mut rng);
    let phone: PhoneNumber = "+15551230000".parse().expect("phone");
    let platform = CompanionPlatform {
        id: "1".into(),
        display: "Chrome (Linux)".into(),
    };
    let (request, _) = LinkCodeRequest::start(&phone, &creds, &platform, &mut rng);
    let refused = Node::new("iq")
        .attr("type", "error")
        .children(vec![Node::new("error")
            .attr("code", "400")
            .attr("text", "bad-request")]);
    assert_eq!(
        request.handle_reply(&refused).err(),
        Some(LinkCodeError::Refused("400 bad-request".into()))
    );
    let (request, _) = LinkCodeRequest::start(&phone, &creds, &platform, &mut rng);
    assert_eq!(
        request
            .handle_reply(&Node::new("iq").attr("type", "result"))
            .err(),
        Some(LinkCodeError::Missing("link_code_pairing_ref"))
    );
    let (request, hello) = LinkCodeRequest::start(&phone, &creds, &platform, &mut rng);
    let code = request.code().clone();
    let awaiting = request
        .handle_reply(&reply_with_ref(b"ref-2"))
        .expect("ref");
    let identity = KeyPair::generate(&mut rng);
    let ephemeral = KeyPair::generate(&mut rng);
    let (_, other_ref) =
        phone_notification(&hello, &code, b"ref-3", &identity, &ephemeral, &mut rng);
    assert_eq!(
        awaiting
            .handle_notification(&other_ref, &creds, &mut rng)
            .err(),
        Some(LinkCodeError::RefMismatch)
    );
    let short = Node::new(REG_TAG).children(vec![
        Node::new("link_code_pairing_ref").bytes(b"ref-2".to_vec()),
        Node::new("primary_identity_pub").bytes(vec![1; 31]),
        Node::new("link_code_pairing_wrapped_primary_ephemeral_pub").bytes(vec![0; 80]),
    ]);
    assert!(matches!(
        awaiting.handle_notification(&short, &creds, &mut rng),
        Err(LinkCodeError::Length { len: 31, .. })
    ));
    let missing = Node::new(REG_TAG).children(vec![
        Node::new("link_code_pairing_ref").bytes(b"ref-2".to_vec())
    ]);
    assert_eq!(
        awaiting
            .handle_notification(&missing, &creds, &mut rng)
            .err(),
        Some(LinkCodeError::Missing(
            "link_code_pairing_wrapped_primary_ephemeral_pub"
        ))
    );
}
