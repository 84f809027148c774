//! Ephemeral traffic of the simulated server: chat states and presence
//! changes go to the live connections of the devices concerned and are
//! never queued (a device that is offline simply misses them, as with
//! WhatsApp's server); and the simulator's calls that make a virtual phone
//! type, go online or keep its read receipts private. Never holds a lock
//! across an `.await`; imports `wa` only.

use std::sync::Arc;

use super::presence::{self, ClientChatState, PresenceNotice};
use super::registry::Command;
use super::{unix_now, Inner, SimError, Simulator};
use crate::wa::binary::Node;
use crate::wa::jid::{Jid, PhoneNumber, DEFAULT_USER_SERVER};
use crate::wa::presence::ChatState;

impl Inner {
    /// Sends `node` to the live connections `jid` names (one device, or
    /// every companion of an account for device 0); nothing is queued.
    async fn send_live(&self, jid: &Jid, node: &Arc<Node>) {
        for conn in self.registry.connections_of(jid) {
            // A connection that just ended misses it, as it would offline.
            let _ = conn.send(Command::Deliver(Arc::clone(node))).await;
        }
    }

    /// A chat state from `sender` (a device, or a virtual phone's account):
    /// to the peer's online devices, or to every other member's in a group
    /// the sender belongs to.
    pub(crate) async fn relay_chat_state(&self, sender: &Jid, state: ClientChatState) {
        let users: Vec<String> = if state.to.is_group() {
            if self
                .groups
                .check_sender(&state.to.user, &sender.user)
                .is_err()
            {
                return;
            }
            self.groups
                .members(&state.to.user)
                .unwrap_or_default()
                .into_iter()
                .filter(|user| *user != sender.user)
                .collect()
        } else if state.to.user == sender.user {
            // Typing to oneself shows nowhere.
            return;
        } else {
            vec![state.to.user.clone()]
        };
        let node = Arc::new(presence::delivered_chat_state(&state, sender));
        for user in users {
            self.send_live(&Jid::new(user, DEFAULT_USER_SERVER), &node)
                .await;
        }
    }

    /// `user` went online or offline: its subscribers' connections hear it.
    pub(crate) async fn change_presence(&self, user: &str, available: bool) {
        if let Some(notice) = self.presence.set_available(user, available, unix_now()) {
            self.tell_presence(notice).await;
        }
    }

    async fn tell_presence(&self, notice: PresenceNotice) {
        let node = Arc::new(notice.node);
        // Subscribers are companions (a connection subscribed); device 0
        // would name the whole account.
        for device in notice.devices.iter().filter(|d| d.device != 0) {
            self.send_live(device, &node).await;
        }
    }
}

impl Simulator {
    /// Sets whether `phone`'s account keeps its read receipts private (the
    /// `readreceipts` privacy category `none`), as its phone would.
    pub fn set_read_receipts(&self, phone: &PhoneNumber, shared: bool) -> Result<(), SimError> {
        self.require_account(phone)?;
        self.inner
            .presence
            .set_receipts_hidden(phone.as_str(), !shared);
        Ok(())
    }

    /// The virtual phone of `phone` goes online or offline: the devices
    /// subscribed to the account's presence are told.
    pub async fn set_presence(&self, phone: &PhoneNumber, available: bool) -> Result<(), SimError> {
        self.require_account(phone)?;
        self.inner.change_presence(phone.as_str(), available).await;
        Ok(())
    }

    /// The virtual phone of `phone` types, records or stops in the chat
    /// `chat` (an account or a group it is in): the chat's online devices
    /// are told.
    pub async fn send_chat_state(
        &self,
        phone: &PhoneNumber,
        chat: &Jid,
        state: ChatState,
    ) -> Result<(), SimError> {
        self.require_account(phone)?;
        let stanza = crate::wa::presence::chat_state(chat, state);
        let parsed = presence::parse_chat_state(&stanza)
            .map_err(|err| SimError::InvalidJid(format!("{chat}: {err}")))?;
        let sender = Jid::new(phone.as_str(), DEFAULT_USER_SERVER);
        self.inner.relay_chat_state(&sender, parsed).await;
        Ok(())
    }

    fn require_account(&self, phone: &PhoneNumber) -> Result<(), SimError> {
        if self
            .inner
            .registry
            .knows(&Jid::new(phone.as_str(), DEFAULT_USER_SERVER))
        {
            Ok(())
        } else {
            Err(SimError::NotFound(format!("no account {phone}")))
        }
    }
}
