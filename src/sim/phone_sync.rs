//! What a virtual phone sends a companion it has just linked, as a real
//! primary phone does: the account's app-state sync key (so the companion
//! can read and write app-state, and clients such as Baileys stop holding
//! back incoming messages while they wait for it) and its history
//! (`phone_history`). Both travel as ordinary
//! end-to-end encrypted messages from device 0. And the account's
//! app-state as the server keeps it for its companions: the push name
//! setting in `critical_block`, encrypted with that key. Never holds a
//! registry lock across an `.await`. Imports `wa` only.

use super::messaging::PhonePlan;
use super::stanza;
use super::{unix_now, Inner, SimError};
use crate::proto::wa::message::protocol_message::Type as ProtocolType;
use crate::proto::wa::message::{AppStateSyncKeyShare, ProtocolMessage};
use crate::proto::wa::Message;
use crate::wa::appstate::{self, CollectionState, MutationKeys, CRITICAL_BLOCK};
use crate::wa::binary::Node;
use crate::wa::jid::Jid;

impl Inner {
    /// The phone of `companion`'s account greets the newly linked device:
    /// the app-state key share first, then the history (`phone_history`;
    /// all of it with `full_sync`). All wait in the companion's queue until
    /// it logs in.
    pub(crate) async fn welcome_companion(
        &self,
        companion: &Jid,
        full_sync: bool,
    ) -> Result<(), SimError> {
        let plan = self.phone_plan_own(companion);
        let now_ms = i64::try_from(unix_now().saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut rng = self.fork_rng();
        let key = self
            .registry
            .with_handset(&companion.user, |handset| {
                handset.app_state_key(now_ms, &mut rng)
            })
            .ok_or_else(|| SimError::NotFound(format!("no account {}", companion.user)))?;
        let share = protocol_message(ProtocolMessage {
            r#type: Some(ProtocolType::AppStateSyncKeyShare.into()),
            app_state_sync_key_share: Some(AppStateSyncKeyShare {
                keys: vec![key.to_proto()],
            }),
            ..Default::default()
        });
        self.send_own(&plan, &share).await?;
        self.send_history(&plan, companion, full_sync).await
    }

    /// Answers a companion's app-state sync: once the account's phone has
    /// made its app-state key, `critical_block` is at version 1, one patch
    /// that sets the account's push name (`setting_pushName`); the other
    /// collections are the phone's (`app_state`).
    pub(crate) async fn app_state_sync_answer(&self, companion: &Jid, id: &str, iq: &Node) -> Node {
        let user = &companion.user;
        let name = self.registry.push_name(user).filter(|n| !n.is_empty());
        let key = self
            .registry
            .with_handset(user, |handset| handset.shared_app_state_key())
            .flatten();
        let critical = name.zip(key).and_then(|(name, key)| {
            let keys = MutationKeys::expand(key.data.as_ref());
            let setting = appstate::push_name_mutation(&name, key.timestamp_ms);
            self.with_rng(|rng| {
                appstate::encode_patch(
                    CRITICAL_BLOCK,
                    &mut CollectionState::default(),
                    &key.id,
                    &keys,
                    &[setting],
                    rng,
                )
            })
            .ok()
        });
        // The collections the phone keeps (see `app_state`).
        let snapshots = self.app_state_snapshots(user, iq).await;
        stanza::app_state_sync_result(id, iq, |collection, asked| match &critical {
            Some(patch) if collection == CRITICAL_BLOCK && asked < 1 => {
                (1, None, vec![patch.clone()])
            }
            _ if collection == CRITICAL_BLOCK => (asked, None, Vec::new()),
            _ => self.kept_app_state(user, collection, asked, &snapshots),
        })
    }

    async fn send_own(&self, plan: &PhonePlan, message: &Message) -> Result<(), SimError> {
        self.phone_send_message(plan, message, message, None)
            .await
            .map(drop)
    }
}

fn protocol_message(protocol: ProtocolMessage) -> Message {
    Message {
        protocol_message: Some(Box::new(protocol)),
        ..Default::default()
    }
}
