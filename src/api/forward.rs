//! Any gateway answers for any session when several share one store: a call for a session
//! another gateway serves is forwarded to that gateway's advertised address, once (a forwarded
//! call carries `wagate-forwarded` and is never forwarded again, so two gateways with stale
//! views cannot bounce a call between them). A session nobody serves is started where the call
//! arrived (`Manager::locate`). `ListSessions` gathers every gateway's sessions.
//!
//! Forwarded calls keep their metadata (API key, deadline) and their answer is passed back
//! untouched, errors included: a gateway that cannot be reached gives UNAVAILABLE, which a
//! retry policy retries once the session has moved.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Extensions, Request, Status, Streaming};

use crate::proto::gateway::gateway_client::GatewayClient;
use crate::proto::gateway::{ListSessionsRequest, MediaHandle, Session, UploadMediaChunk};
use crate::runtime::{Location, Manager};

use super::convert;
use super::gateway::session_id;

/// Metadata marking a call one gateway forwarded to another.
pub(crate) const FORWARDED: &str = "wagate-forwarded";

/// How long connecting to another gateway may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(3);
/// Clients kept for other gateways' addresses; beyond it the table starts over (gateways come
/// and go with their pods' addresses).
const MAX_PEERS: usize = 256;
/// Largest message accepted from another gateway (as the API accepts from callers).
const MAX_MESSAGE: usize = 4 << 20;

/// Where a call is answered.
pub(crate) enum Route {
    Here,
    Peer(GatewayClient<Channel>),
}

/// Clients of the other gateways, by address, connected on first use.
#[derive(Default)]
pub(crate) struct Peers {
    clients: Mutex<HashMap<String, GatewayClient<Channel>>>,
}

impl Peers {
    fn client(&self, address: &str) -> Result<GatewayClient<Channel>, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| {
                Status::unavailable(format!(
                    "the gateway serving this session advertises an unusable address {address:?}: {e}"
                ))
            })?
            .connect_timeout(CONNECT_WITHIN)
            .tcp_nodelay(true);
        let client = GatewayClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        if clients.len() >= MAX_PEERS {
            clients.clear();
        }
        clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }

    /// Where a call for `raw_id` with `metadata` is answered.
    pub(crate) async fn route(
        &self,
        manager: &Manager,
        raw_id: &str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Route, Status> {
        if !manager.is_shared() {
            return Ok(Route::Here);
        }
        let id = session_id(raw_id)?;
        match manager.locate(&id).await? {
            Location::Here => Ok(Route::Here),
            Location::At(address) if metadata.contains_key(FORWARDED) => {
                Err(Status::unavailable(format!(
                    "session {id} moved to the gateway at {address} while this call was forwarded; retry"
                )))
            }
            Location::At(address) => Ok(Route::Peer(self.client(&address)?)),
        }
    }

    /// Every stored session, each as the gateway serving it reports it; a session nobody
    /// serves (or whose gateway cannot be reached) as the store has it.
    pub(crate) async fn list_everywhere(
        &self,
        manager: &Manager,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Vec<Session>, Status> {
        let placed = manager.placements().await?;
        let mut by_address: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut sessions = Vec::with_capacity(placed.len());
        for (n, (status, location)) in placed.into_iter().enumerate() {
            if let Location::At(address) = location {
                by_address.entry(address).or_default().push(n);
            }
            sessions.push(convert::session(status));
        }
        for (address, indices) in by_address {
            let answer = match self.client(&address) {
                Ok(mut peer) => {
                    peer.list_sessions(forwarded(Request::from_parts(
                        metadata.clone(),
                        Extensions::default(),
                        ListSessionsRequest {},
                    )))
                    .await
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(answer) => {
                    let mut theirs: HashMap<String, Session> = answer
                        .into_inner()
                        .sessions
                        .into_iter()
                        .map(|s| (s.session_id.clone(), s))
                        .collect();
                    for n in indices {
                        if let Some(live) = theirs.remove(&sessions[n].session_id) {
                            sessions[n] = live;
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    %address,
                    "cannot list the sessions of another gateway (their stored state is shown): {e}"
                ),
            }
        }
        Ok(sessions)
    }

    /// `UploadMedia` for a session another gateway serves: the upload goes there (its handle
    /// is only valid there), chunk by chunk. A caller's stream that breaks cancels the
    /// forwarded upload, so no truncated file gets a handle.
    pub(crate) async fn upload_elsewhere(
        mut peer: GatewayClient<Channel>,
        metadata: tonic::metadata::MetadataMap,
        first: UploadMediaChunk,
        mut rest: Streaming<UploadMediaChunk>,
    ) -> Result<tonic::Response<MediaHandle>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.send(first).await;
        let call = peer.upload_media(forwarded(Request::from_parts(
            metadata,
            Extensions::default(),
            ReceiverStream::new(rx),
        )));
        let pump = async move {
            while let Some(chunk) = rest.message().await? {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok::<(), Status>(())
        };
        let mut call = pin!(call);
        let mut pump = pin!(pump);
        let mut pumping = true;
        loop {
            tokio::select! {
                pumped = &mut pump, if pumping => {
                    pumped?;
                    pumping = false;
                }
                answer = &mut call => return answer,
            }
        }
    }
}

/// `request`, marked as forwarded; its extensions (this connection's) stay behind.
pub(crate) fn forwarded<T>(request: Request<T>) -> Request<T> {
    let (mut metadata, _, message) = request.into_parts();
    metadata.insert(FORWARDED, MetadataValue::from_static("1"));
    Request::from_parts(metadata, Extensions::default(), message)
}
