//! The virtual phone's side of pairing by link code: the user types the
//! code the companion shows; the phone unwraps the companion's ephemeral
//! key with it, sends its own (wrapped the same way) in a
//! `link_code_companion_reg` notification, opens the key bundle of the
//! companion's `companion_finish`, and pairs the companion as a QR scan
//! would, keyed with the ADV secret both sides derived.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::debug;

use super::conn::unix_now_ms;
use super::registry::{Command, NewAccount, ReserveError};
use super::{stanza, unix_now, SimError, Simulator, PAIR_TIMEOUT};
use crate::wa::binary::Node;
use crate::wa::crypto::KeyPair;
use crate::wa::jid::{Jid, PhoneNumber};
use crate::wa::link_code::{self, LinkCode, LinkCodeError};

/// How long a link code stays valid by default: as long as the companion
/// keeps its pairing window open (six QR refs, 60 s + 5 × 20 s).
pub const DEFAULT_LINK_CODE_TTL: Duration = Duration::from_secs(160);

impl Simulator {
    /// How long link codes issued from now on stay valid.
    pub fn set_link_code_ttl(&self, ttl: Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.inner.link_code_ttl_ms.store(ms, Ordering::Relaxed);
    }

    /// The user of `phone` types `code`: the companion that asked for a
    /// link code for this number is paired to the account (created with
    /// `push_name` if new). Returns the device JID once the companion
    /// confirmed; it is then told to reconnect (515). A wrong code leaves
    /// the companion waiting for another try.
    pub async fn enter_link_code(
        &self,
        phone: &PhoneNumber,
        code: &str,
        push_name: &str,
    ) -> Result<Jid, SimError> {
        let code: LinkCode = code.parse().map_err(SimError::InvalidLinkCode)?;
        let inner = &self.inner;
        let now = unix_now();
        let new_account = inner.with_rng(NewAccount::generate);
        let (noise_key, pending) = inner
            .registry
            .take_link_code(phone)
            .ok_or(SimError::NoPendingLinkCode)?;
        let Some(request) = pending.link_code.clone() else {
            return Err(SimError::NoPendingLinkCode);
        };
        if unix_now_ms() >= request.expires_at_ms {
            // Spent: the companion must ask for a new code.
            return Err(SimError::LinkCodeExpired);
        }
        let reservation = inner
            .registry
            .reserve_for(pending, &noise_key, phone, push_name, now, new_account)
            .map_err(|err| match err {
                ReserveError::NoPending | ReserveError::UnknownRef => SimError::NoPendingLinkCode,
                ReserveError::DevicesExhausted => SimError::DevicesExhausted,
            })?;
        let (ephemeral, salt_iv) = inner.with_rng(|rng| {
            let mut salt_iv = [0u8; 48];
            rand::RngCore::fill_bytes(rng, &mut salt_iv);
            (KeyPair::generate(rng), salt_iv)
        });
        // Two PBKDF2 derivations of 131072 rounds: off the async workers.
        let typed = code.clone();
        let wrapped_in = request.wrapped_ephemeral.clone();
        let ephemeral_public = ephemeral.public;
        let crypto = tokio::task::spawn_blocking(move || {
            let companion = link_code::unwrap_ephemeral(&typed, &wrapped_in)?;
            let (salt, iv) = salt_iv.split_at(32);
            let salt: [u8; 32] = salt.try_into().map_err(|_| LinkCodeError::Format)?;
            let iv: [u8; 16] = iv.try_into().map_err(|_| LinkCodeError::Format)?;
            let wrapped = link_code::wrap_ephemeral(&typed, &ephemeral_public, &salt, &iv);
            Ok::<_, LinkCodeError>((companion, wrapped))
        })
        .await;
        let (companion_ephemeral, wrapped_primary) = match crypto {
            Ok(Ok(done)) => done,
            Ok(Err(err)) => {
                inner
                    .registry
                    .restore_pending(noise_key, reservation.pending);
                return Err(SimError::InvalidLinkCode(err));
            }
            Err(err) => {
                inner
                    .registry
                    .restore_pending(noise_key, reservation.pending);
                return Err(SimError::Encryption(err.to_string()));
            }
        };
        let notification = Node::new("notification")
            .attr("from", Jid::server_jid())
            .attr("id", inner.new_iq_id())
            .attr("type", link_code::NOTIFICATION_TYPE)
            .attr("t", now.to_string())
            .children(vec![Node::new(link_code::REG_TAG)
                .attr("stage", "primary_hello")
                .children(vec![
                    Node::new("link_code_pairing_ref").bytes(request.reference.clone()),
                    Node::new("primary_identity_pub")
                        .bytes(reservation.account_identity.public.to_vec()),
                    Node::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                        .bytes(wrapped_primary.to_vec()),
                ])]);
        let (finish_tx, finish_rx) = oneshot::channel();
        let commands = reservation.pending.commands.clone();
        let sent = commands
            .send(Command::LinkCodeNotify {
                notification,
                finish: finish_tx,
            })
            .await;
        if sent.is_err() {
            return Err(SimError::CompanionGone);
        }
        let finish = match tokio::time::timeout(PAIR_TIMEOUT, finish_rx).await {
            Ok(Ok(node)) => node,
            Ok(Err(_)) => return Err(SimError::CompanionGone),
            Err(_) => {
                inner
                    .registry
                    .restore_pending(noise_key, reservation.pending);
                return Err(SimError::PairTimeout(PAIR_TIMEOUT));
            }
        };
        let finish_id = finish.attr_string("id").unwrap_or_default();
        let answer = |node: Node| {
            let commands = commands.clone();
            async move {
                let _ = commands.send(Command::Deliver(node.into())).await;
            }
        };
        let field = |tag: &str| {
            finish
                .child(link_code::REG_TAG)
                .and_then(|r| r.child(tag))
                .and_then(Node::content_bytes)
        };
        let shared = ephemeral.dh(&companion_ephemeral);
        let opened = match (
            field("link_code_pairing_ref"),
            field("link_code_pairing_wrapped_key_bundle"),
        ) {
            (Some(r), Some(bundle)) if r == request.reference.as_slice() => {
                link_code::unwrap_key_bundle(&shared, bundle)
            }
            _ => Err(LinkCodeError::Missing(
                "link_code_pairing_wrapped_key_bundle",
            )),
        };
        let bundle = match opened {
            Ok(bundle) => bundle,
            Err(err) => {
                answer(stanza::iq_error(&finish_id, 400, "bad-request")).await;
                // The companion may be given the right code yet.
                inner
                    .registry
                    .restore_pending(noise_key, reservation.pending);
                debug!(%err, "link code refused");
                return Err(match err {
                    LinkCodeError::BundleDecrypt => SimError::WrongLinkCode,
                    other => SimError::InvalidPairConfirmation(other.to_string()),
                });
            }
        };
        let companion_identity = reservation.pending.bundle.identity;
        if bundle.companion_identity != companion_identity
            || field("companion_identity_public") != Some(companion_identity.as_slice())
            || bundle.primary_identity != reservation.account_identity.public
        {
            answer(stanza::iq_error(&finish_id, 400, "bad-request")).await;
            return Err(SimError::InvalidPairConfirmation(
                "the key bundle names other identity keys".into(),
            ));
        }
        answer(stanza::iq_result(&finish_id, Vec::new())).await;
        let identity_shared = reservation.account_identity.dh(&companion_identity);
        let adv_secret = link_code::adv_secret(&shared, &identity_shared, &bundle.adv_random);
        self.finish_pairing(reservation, noise_key, &adv_secret, now)
            .await
    }
}
