//! One websocket connection of the simulated chat server: the Noise
//! responder handshake, then either a registration (QR pairing) or a login
//! session answering the client's stanzas.
//!
//! Each connection is one tokio task. It owns its state and joins two
//! futures: the session (reads frames, answers stanzas, obeys commands from
//! the control side on a bounded channel) and the writer (sends the frames
//! the session queues, after the configured delay, so a delay never stalls
//! reading). Part of `sim`: imports `wa` only, never the gateway layers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

use super::group_message::{self, GroupMessage};
use super::groups::Notice;
use super::presence::{self, ClientChatState, ClientPresence};
use super::registry::{
    Acceptance, Command, ConnId, ConnKind, LoginCheck, PairReply, Pending, PendingLinkCode,
    QueueClass, Termination,
};
use super::routing::{self, ClientMessage, ClientReceipt};
use super::{stanza, unix_now, usync, Inner};
use crate::proto::wa::client_payload::DevicePairingRegistrationData;
use crate::proto::wa::ClientPayload;
use crate::wa::binary::{DecodeError, Node, TokenDict};
use crate::wa::crypto::KeyPair;
use crate::wa::jid::{Jid, PhoneNumber, DEFAULT_USER_SERVER};
use crate::wa::link_code;
use crate::wa::media::media_conn_node;
use crate::wa::noise::{
    encode_frame, FrameDecoder, NoiseError, RecvCipher, SendCipher, ServerHandshake, MAX_FRAME,
    WA_HEADER,
};

/// The only websocket path served.
pub(crate) const CHAT_PATH: &str = "/ws/chat";
/// Largest websocket message accepted: one frame of the largest size with
/// its length prefix, plus room for the connection intro.
const MAX_MESSAGE: usize = MAX_FRAME + 3 + 0x400;
/// Websocket read buffer per connection. tungstenite zero-fills the free
/// part of it before every read, so its default (128 KiB) costs that much
/// resident memory per connection and a 128 KiB memset per wake-up; stanzas
/// are small, and larger messages still grow the buffer as needed.
const READ_BUFFER: usize = 0x2000;
/// Time allowed for the websocket upgrade and the Noise handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Frames queued for the writer before the session waits.
const OUTGOING_QUEUE: usize = 64;
/// Commands queued from the control side before senders wait.
const COMMAND_QUEUE: usize = 16;
/// QR refs issued per registration (the first lives 60 s, the others 20 s).
const REFS_PER_REGISTRATION: usize = 6;
/// Pause between the client's handshake finish and the server's first
/// stanza. The real server is at least a network round trip away, and
/// clients rely on it: Baileys 6 derives its transport keys asynchronously
/// after sending ClientFinish and drops (then fails to decrypt after) any
/// frame that arrives before they are ready.
const FIRST_STANZA_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("noise: {0}")]
    Noise(#[from] NoiseError),
    #[error("stanza does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("client payload does not decode: {0}")]
    Payload(#[from] prost::DecodeError),
    #[error("text websocket message; only binary is used")]
    TextMessage,
    #[error("peer closed the connection")]
    Closed,
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("writer stopped")]
    WriterGone,
}

/// What the session hands the writer.
enum Outgoing {
    /// A complete frame (length prefix included).
    Frame(Vec<u8>),
    /// Send a websocket close and stop.
    Close,
    /// Stop without a word: the socket is dropped.
    Drop,
}

/// Longest a connection ended with a notice waits for the client to close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Serves one accepted TCP connection until it ends.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(tcp, check_path, Some(config));
    let upgrade = tokio::select! {
        upgrade = tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade) => upgrade,
        _ = shutdown.changed() => return,
    };
    let ws = match upgrade {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            debug!(%peer, %err, "websocket upgrade refused");
            return;
        }
        Err(_) => {
            debug!(%peer, "websocket upgrade timed out");
            return;
        }
    };
    let (sink, stream) = ws.split();
    let (id, delay) = inner.registry.open_connection();
    let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let session = Session {
        inner: Arc::clone(&inner),
        id,
        delay: Arc::clone(&delay),
        out: out_tx,
        shutdown,
    };
    let (result, ()) = tokio::join!(session.run(stream), write_frames(sink, out_rx, delay));
    inner.registry.close_connection(id);
    inner.presence.forget_connection(id);
    match result {
        Ok(()) => debug!(%peer, "connection ended"),
        Err(err) => debug!(%peer, %err, "connection ended with an error"),
    }
}

/// Upgrade callback: only `/ws/chat` is a chat endpoint.
#[allow(clippy::result_large_err)] // the signature is tungstenite's
fn check_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == CHAT_PATH {
        Ok(response)
    } else {
        let mut refusal = ErrorResponse::new(Some("not found".to_owned()));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        Err(refusal)
    }
}

async fn write_frames(
    mut sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    mut frames: mpsc::Receiver<Outgoing>,
    delay: Arc<AtomicU32>,
) {
    while let Some(out) = frames.recv().await {
        match out {
            Outgoing::Frame(frame) => {
                let ms = delay.load(Ordering::Relaxed);
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                    if sink.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                    continue;
                }
                // Frames already waiting go out with this one in a single
                // flush: one write for a burst instead of one per stanza.
                if sink.feed(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
                let mut after = None;
                for _ in 0..OUTGOING_QUEUE {
                    match frames.try_recv() {
                        Ok(Outgoing::Frame(frame)) => {
                            if sink.feed(Message::Binary(frame.into())).await.is_err() {
                                return;
                            }
                        }
                        Ok(other) => {
                            after = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                match after {
                    None | Some(Outgoing::Frame(_)) => {}
                    Some(Outgoing::Close) => {
                        // The peer may already be gone; closing is best effort.
                        let _ = sink.close().await;
                        return;
                    }
                    Some(Outgoing::Drop) => return,
                }
            }
            Outgoing::Close => {
                // The peer may already be gone; closing is best effort.
                let _ = sink.close().await;
                return;
            }
            Outgoing::Drop => return,
        }
    }
}

/// Reads Noise frames out of websocket messages.
struct FrameReader {
    stream: SplitStream<WebSocketStream<TcpStream>>,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// The next complete frame, or `None` once the peer closed. Cancel-safe:
    /// bytes already received stay buffered in the decoder.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ConnError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            match self.stream.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(data))) => self.decoder.push(&data),
                Some(Ok(Message::Text(_))) => return Err(ConnError::TextMessage),
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
            }
        }
    }
}

/// The encrypted, framed stanza pipe after the handshake.
struct Link {
    reader: FrameReader,
    /// The token dictionary the client announced in its intro.
    dict: TokenDict,
    send: SendCipher,
    recv: RecvCipher,
    out: mpsc::Sender<Outgoing>,
}

impl Link {
    async fn send_node(&mut self, node: &Node) -> Result<(), ConnError> {
        let ciphertext = self.send.encrypt(&self.dict.marshal(node))?;
        queue_frame(&self.out, &ciphertext).await
    }

    /// The next stanza, or `None` once the peer closed. Cancel-safe.
    async fn next_node(&mut self) -> Result<Option<Node>, ConnError> {
        let Some(frame) = self.reader.next().await? else {
            return Ok(None);
        };
        let plaintext = self.recv.decrypt(&frame)?;
        Ok(Some(self.dict.unmarshal(&plaintext)?))
    }

    /// Ends the connection the way `how` says.
    async fn terminate(&mut self, how: Termination) -> Result<(), ConnError> {
        let notice = match how {
            Termination::StreamError(0) => {
                return send_out(&self.out, Outgoing::Drop).await;
            }
            Termination::StreamError(code) => Some(stanza::stream_error(code)),
            Termination::Replaced => Some(stanza::stream_replaced()),
            Termination::DeviceRemoved => Some(stanza::stream_device_removed()),
            Termination::Shutdown => None,
        };
        let Some(notice) = notice else {
            return send_out(&self.out, Outgoing::Close).await;
        };
        self.send_node(&notice).await?;
        self.send_node(&stanza::stream_end()).await?;
        send_out(&self.out, Outgoing::Close).await?;
        // The client may be writing (receipts, acks) while the notice is on
        // its way: closing the socket under it now would reset the
        // connection, and a client that sees its write fail before it reads
        // the notice would take the end for a network error. So the socket
        // stays open, and what arrives is read and dropped, until the client
        // answers the websocket close (or a short while passes).
        let drain = async { while let Ok(Some(_)) = self.reader.next().await {} };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
        Ok(())
    }
}

async fn send_out(out: &mpsc::Sender<Outgoing>, item: Outgoing) -> Result<(), ConnError> {
    out.send(item).await.map_err(|_| ConnError::WriterGone)
}

async fn queue_frame(out: &mpsc::Sender<Outgoing>, payload: &[u8]) -> Result<(), ConnError> {
    let mut frame = Vec::with_capacity(payload.len() + 3);
    encode_frame(payload, &mut frame)?;
    send_out(out, Outgoing::Frame(frame)).await
}

/// A connection before it knows what it is.
struct Session {
    inner: Arc<Inner>,
    id: ConnId,
    delay: Arc<AtomicU32>,
    out: mpsc::Sender<Outgoing>,
    shutdown: watch::Receiver<bool>,
}

/// Whether the session loop goes on after a stanza or command.
enum Flow {
    Continue,
    Stop,
}

/// What a connection turned out to be, with its per-role state.
enum Role {
    Registration {
        noise_key: [u8; 32],
        /// The pair-success iq in flight: its id and who awaits the answer.
        awaiting: Option<(String, oneshot::Sender<PairReply>)>,
        /// Who awaits the companion's `companion_finish` after the phone's
        /// link-code notification.
        finishing: Option<oneshot::Sender<Node>>,
    },
    Device {
        jid: Jid,
        /// A passive login gets its offline queue and the offline marker
        /// after its `active` iq.
        offline_pending: Option<Vec<Node>>,
        /// Hands what the device sends to its routing task, which delivers
        /// in order without ever stalling this connection's reads.
        router: mpsc::UnboundedSender<Routed>,
    },
}

/// A stanza from a device, for its routing task.
enum Routed {
    Message(ClientMessage),
    Receipt(ClientReceipt),
    GroupMessage(GroupMessage),
    Notices(Vec<Notice>),
    ChatState(ClientChatState),
    /// The account went online (`true`) or offline.
    Presence(bool),
}

async fn route_loop(inner: Arc<Inner>, sender: Jid, mut jobs: mpsc::UnboundedReceiver<Routed>) {
    while let Some(job) = jobs.recv().await {
        match job {
            Routed::Message(message) => inner.route_message(&sender, message).await,
            Routed::Receipt(receipt) if receipt.to.is_group() => {
                inner.route_group_receipt(&sender, receipt).await;
            }
            Routed::Receipt(receipt) => inner.route_receipt(&sender, receipt).await,
            Routed::GroupMessage(message) => inner.route_group_message(&sender, message).await,
            Routed::Notices(notices) => inner.deliver_notices(notices).await,
            Routed::ChatState(state) => inner.relay_chat_state(&sender, state).await,
            Routed::Presence(available) => inner.change_presence(&sender.user, available).await,
        }
    }
}

/// Sends the queued stanzas (already marked `offline`), then the marker.
async fn send_offline(link: &mut Link, queued: Vec<Node>) -> Result<(), ConnError> {
    let count = queued.len();
    for node in &queued {
        link.send_node(node).await?;
    }
    link.send_node(&stanza::offline_marker(count)).await
}

impl Session {
    async fn run(self, stream: SplitStream<WebSocketStream<TcpStream>>) -> Result<(), ConnError> {
        let mut reader = FrameReader {
            stream,
            decoder: FrameDecoder::server(),
        };
        let mut shutdown = self.shutdown.clone();
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&mut reader));
        let (dict, client_static, payload, send, recv) = tokio::select! {
            done = handshake => done.map_err(|_| ConnError::HandshakeTimeout)??,
            _ = shutdown.changed() => return send_out(&self.out, Outgoing::Drop).await,
        };
        // Boxed: the link lives as long as the connection, and a task's
        // future would otherwise hold it in every await's state.
        let mut link = Box::new(Link {
            reader,
            dict,
            send,
            recv,
            out: self.out.clone(),
        });
        let payload = ClientPayload::decode(payload.as_slice())?;
        tokio::time::sleep(FIRST_STANZA_PAUSE).await;
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let role = if let Some(data) = payload.device_pairing_data.as_ref() {
            match self
                .register(&mut link, data, client_static, commands_tx)
                .await?
            {
                Some(role) => role,
                None => return Ok(()),
            }
        } else {
            match self
                .login(&mut link, &payload, client_static, commands_tx)
                .await?
            {
                Some(role) => role,
                None => return Ok(()),
            }
        };
        self.serve_stanzas(link, role, commands).await
    }

    async fn handshake(
        &self,
        reader: &mut FrameReader,
    ) -> Result<(TokenDict, [u8; 32], Vec<u8>, SendCipher, RecvCipher), ConnError> {
        let hello = reader.next().await?.ok_or(ConnError::Closed)?;
        let ephemeral = self.inner.with_rng(KeyPair::generate);
        // The prologue is the intro the client sent, and its last byte picks
        // the token dictionary: Baileys 6 announces 2, current clients 3.
        let header = reader.decoder.header().copied().unwrap_or(WA_HEADER);
        let dict = TokenDict::from_version(header[3]).unwrap_or(TokenDict::CURRENT);
        let (handshake, server_hello) = ServerHandshake::respond_with_header(
            header,
            &hello,
            ephemeral,
            &self.inner.keys.static_key,
            &self.inner.keys.cert_chain,
        )?;
        queue_frame(&self.out, &server_hello).await?;
        let finish = reader.next().await?.ok_or(ConnError::Closed)?;
        let (client_static, payload, transport) = handshake.finish(&finish)?;
        let (send, recv) = transport.split();
        Ok((dict, client_static, payload, send, recv))
    }

    /// A new companion: keep its keys, hand out QR refs, await a scan.
    async fn register(
        &self,
        link: &mut Link,
        data: &DevicePairingRegistrationData,
        noise_key: [u8; 32],
        commands: mpsc::Sender<Command>,
    ) -> Result<Option<Role>, ConnError> {
        let bundle = match stanza::registration_bundle(data) {
            Ok(bundle) => bundle,
            Err(err) => {
                info!(%err, "registration refused");
                link.send_node(&stanza::failure(400)).await?;
                send_out(&link.out, Outgoing::Close).await?;
                return Ok(None);
            }
        };
        let registry = &self.inner.registry;
        registry.attach(
            self.id,
            ConnKind::Registration(noise_key),
            commands.clone(),
            Arc::clone(&self.delay),
        );
        let refs: Vec<String> = (0..REFS_PER_REGISTRATION)
            .map(|_| self.inner.new_ref())
            .collect();
        registry.add_pending(
            noise_key,
            Pending {
                conn: self.id,
                refs: refs.clone(),
                bundle,
                platform: stanza::platform_name(data),
                full_sync: stanza::requires_full_sync(data),
                commands,
                link_code: None,
            },
        );
        debug!(conn = self.id.0, "registration waiting for a QR scan");
        link.send_node(&stanza::pair_device(&self.inner.new_iq_id(), &refs))
            .await?;
        Ok(Some(Role::Registration {
            noise_key,
            awaiting: None,
            finishing: None,
        }))
    }

    /// A registration's `link_code_companion_reg` iq: `companion_hello`
    /// registers a link code for a phone number and is answered with its
    /// ref; `companion_finish` goes to the phone that sent the notification,
    /// which answers it. `None` when the answer is left to that phone.
    fn on_link_code_iq(
        &self,
        noise_key: &[u8; 32],
        finishing: &mut Option<oneshot::Sender<Node>>,
        id: &str,
        node: Node,
    ) -> Option<Node> {
        let reg = node.child(link_code::REG_TAG)?;
        match reg.attr_str("stage") {
            Some("companion_hello") => {
                let Some(code) = companion_hello(reg, noise_key) else {
                    return Some(stanza::iq_error(id, 400, "bad-request"));
                };
                let reference = self.inner.new_ref().into_bytes();
                let code = PendingLinkCode {
                    reference: reference.clone(),
                    expires_at_ms: unix_now_ms().saturating_add(self.inner.link_code_ttl_ms()),
                    ..code
                };
                if !self.inner.registry.set_link_code(noise_key, self.id, code) {
                    return Some(stanza::iq_error(id, 409, "conflict"));
                }
                debug!(conn = self.id.0, "registration waiting for a link code");
                Some(stanza::iq_result(
                    id,
                    vec![Node::new(link_code::REG_TAG)
                        .children(vec![Node::new("link_code_pairing_ref").bytes(reference)])],
                ))
            }
            Some("companion_finish") => match finishing.take() {
                Some(phone) => match phone.send(node) {
                    Ok(()) => None,
                    // EnterLinkCode gave up waiting.
                    Err(_) => Some(stanza::iq_error(id, 408, "timeout")),
                },
                None => Some(stanza::iq_error(id, 400, "bad-request")),
            },
            _ => Some(stanza::iq_error(id, 400, "bad-request")),
        }
    }

    /// A returning companion: check its device and noise key, then greet it.
    async fn login(
        &self,
        link: &mut Link,
        payload: &ClientPayload,
        noise_key: [u8; 32],
        commands: mpsc::Sender<Command>,
    ) -> Result<Option<Role>, ConnError> {
        let device = payload.device.and_then(|d| u16::try_from(d).ok());
        let check = match (payload.username, device) {
            (Some(user), Some(device)) => {
                let jid = Jid::with_device(user.to_string(), device, DEFAULT_USER_SERVER);
                let check = self.inner.registry.check_login(&jid, &noise_key);
                (jid, check)
            }
            _ => (
                Jid::server_jid(),
                LoginCheck::Refused("no username or device"),
            ),
        };
        let (jid, created, replaced) = match check {
            (jid, LoginCheck::Accepted { created, replaced }) => (jid, created, replaced),
            (_, LoginCheck::Refused(reason)) => {
                info!(reason, "login refused");
                link.send_node(&stanza::failure(401)).await?;
                send_out(&link.out, Outgoing::Close).await?;
                return Ok(None);
            }
        };
        for other in replaced {
            // A connection that already ended has dropped its receiver.
            let _ = other.send(Command::Terminate(Termination::Replaced)).await;
        }
        let queued =
            self.inner
                .registry
                .attach_device(self.id, &jid, commands, Arc::clone(&self.delay));
        debug!(conn = self.id.0, %jid, queued = queued.len(), "logged in");
        let lid = self
            .inner
            .registry
            .lid_of(&jid.user)
            .map(|lid| Jid::new(lid, crate::wa::jid::LID_SERVER));
        link.send_node(&stanza::success(unix_now(), created, lid.as_ref()))
            .await?;
        let passive = payload.passive.unwrap_or(false);
        let offline_pending = if passive {
            Some(queued)
        } else {
            send_offline(link, queued).await?;
            None
        };
        let (router, jobs) = mpsc::unbounded_channel();
        tokio::spawn(route_loop(Arc::clone(&self.inner), jid.clone(), jobs));
        Ok(Some(Role::Device {
            jid,
            offline_pending,
            router,
        }))
    }

    async fn serve_stanzas(
        mut self,
        mut link: Box<Link>,
        mut role: Role,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<(), ConnError> {
        loop {
            let flow = tokio::select! {
                node = link.next_node() => match node? {
                    // Boxed: answering a stanza takes a large future,
                    // which the idle connection need not keep room for.
                    Some(node) => Box::pin(self.on_stanza(&mut link, &mut role, node)).await?,
                    None => Flow::Stop,
                },
                command = commands.recv() => match command {
                    Some(command) => on_command(&mut link, &mut role, command).await?,
                    None => Flow::Stop,
                },
                _ = self.shutdown.changed() => {
                    link.terminate(Termination::Shutdown).await?;
                    Flow::Stop
                }
            };
            if let Flow::Stop = flow {
                return Ok(());
            }
        }
    }

    async fn on_stanza(
        &self,
        link: &mut Link,
        role: &mut Role,
        node: Node,
    ) -> Result<Flow, ConnError> {
        if node.tag() != "iq" {
            if let Role::Device { jid, router, .. } = role {
                let node = self.inner.read_lids(node);
                self.on_device_stanza(link, jid, router, &node).await?;
            } else {
                debug!(tag = node.tag(), "stanza ignored before pairing");
            }
            return Ok(Flow::Continue);
        }
        let id = node.attr_string("id").unwrap_or_default();
        match node.attr_str("type") {
            Some("result") | Some("error") => {
                if let Role::Registration { awaiting, .. } = role {
                    if awaiting.as_ref().is_some_and(|(want, _)| *want == id) {
                        if let Some((_, reply)) = awaiting.take() {
                            let answer = if node.attr_str("type") == Some("result") {
                                Ok(node)
                            } else {
                                Err(stanza::refusal(&node))
                            };
                            // ScanQr may have timed out and gone away.
                            let _ = reply.send(answer);
                        }
                    }
                }
                Ok(Flow::Continue)
            }
            _ => match role {
                Role::Registration {
                    noise_key,
                    finishing,
                    ..
                } if node.child(link_code::REG_TAG).is_some() => {
                    let reply = self.on_link_code_iq(noise_key, finishing, &id, node);
                    if let Some(reply) = reply {
                        link.send_node(&reply).await?;
                    }
                    Ok(Flow::Continue)
                }
                Role::Registration { .. } => {
                    // Pings and anything else a companion asks before it is
                    // paired get an empty result.
                    link.send_node(&stanza::iq_result(&id, Vec::new())).await?;
                    Ok(Flow::Continue)
                }
                Role::Device {
                    jid,
                    offline_pending,
                    router,
                } => {
                    if node.attr_str("xmlns") == Some("w:g2") {
                        let node = self.inner.read_lids(node);
                        let (mut reply, notices) = self.inner.group_iq(jid, &node);
                        self.inner.groups_by_lid(&mut reply);
                        link.send_node(&reply).await?;
                        if !notices.is_empty() {
                            // The routing task ends only after this session.
                            let _ = router.send(Routed::Notices(notices));
                        }
                        return Ok(Flow::Continue);
                    }
                    self.on_device_iq(link, jid, offline_pending, &id, &node)
                        .await
                }
            },
        }
    }

    async fn on_device_iq(
        &self,
        link: &mut Link,
        jid: &Jid,
        offline_pending: &mut Option<Vec<Node>>,
        id: &str,
        iq: &Node,
    ) -> Result<Flow, ConnError> {
        let registry = &self.inner.registry;
        let xmlns = iq.attr_str("xmlns").unwrap_or_default();
        let kind = iq.attr_str("type").unwrap_or_default();
        let first = iq.child_nodes().first().map(Node::tag);
        let reply = match (xmlns, kind, first) {
            ("encrypt", "get", Some("count")) => {
                let count = registry.prekey_count(jid);
                stanza::iq_result(
                    id,
                    vec![Node::new("count").attr("value", count.to_string())],
                )
            }
            ("encrypt", "get", Some("key")) => match usync::parse_key_request(iq) {
                Ok(wanted) => usync::key_result(id, &registry.take_bundles(wanted)),
                Err(err) => {
                    info!(%err, "bundle request refused");
                    stanza::iq_error(id, 400, "bad-request")
                }
            },
            ("usync", "get", _) => match usync::parse_query(iq) {
                Ok(query) => {
                    let answers: Vec<usync::UserDevices> = query
                        .users
                        .iter()
                        .map(|user| {
                            let phone = self.inner.phone_jid(user);
                            let lid = (!user.is_lid())
                                .then(|| registry.revealed_lid_of(&phone.user))
                                .flatten()
                                .map(|lid| Jid::new(lid, crate::wa::jid::LID_SERVER));
                            usync::UserDevices {
                                user: user.clone(),
                                devices: registry.user_devices(&phone.user),
                                lid,
                            }
                        })
                        .collect();
                    usync::query_result(id, &query, &answers)
                }
                Err(err) => {
                    info!(%err, "usync query refused");
                    stanza::iq_error(id, 400, "bad-request")
                }
            },
            ("encrypt", "get", Some("digest")) => match registry.prekey_digest(jid) {
                Some((bundle, ids)) => {
                    stanza::iq_result(id, vec![stanza::prekey_digest(&bundle, &ids)])
                }
                None => stanza::iq_error(id, 404, "item-not-found"),
            },
            ("encrypt", "set", _) => {
                let identity = registry.prekey_digest(jid).map(|(b, _)| b.identity);
                match identity.map(|identity| stanza::prekey_upload(iq, &identity)) {
                    Some(Ok(upload)) => {
                        registry.store_prekeys(jid, &upload.keys, Some(upload.signed));
                        debug!(count = upload.keys.len(), "prekeys stored");
                        stanza::iq_result(id, Vec::new())
                    }
                    Some(Err(err)) => {
                        info!(%err, "prekey upload refused");
                        stanza::iq_error(id, 400, "bad-request")
                    }
                    None => stanza::iq_error(id, 404, "item-not-found"),
                }
            }
            ("passive", "set", _) => {
                link.send_node(&stanza::iq_result(id, Vec::new())).await?;
                if first == Some("active") {
                    if let Some(queued) = offline_pending.take() {
                        send_offline(link, queued).await?;
                    }
                }
                return Ok(Flow::Continue);
            }
            ("w", "get", Some("props")) => stanza::iq_result(
                id,
                vec![Node::new("props").attr("protocol", "2").attr("hash", "0")],
            ),
            ("blocklist", "get", _) => stanza::iq_result(id, vec![Node::new("list")]),
            ("w:m", "set", Some("media_conn")) => stanza::iq_result(
                id,
                vec![media_conn_node(&self.inner.media.media_conn(unix_now()))],
            ),
            ("privacy", "get", Some("privacy")) => {
                let hidden = self.inner.presence.receipts_hidden(&jid.user);
                stanza::iq_result(id, vec![stanza::privacy_settings(hidden)])
            }
            ("privacy", "set", Some("privacy")) => {
                // Only the read-receipt category is modelled; the others
                // are taken and have no effect.
                if let Some(hidden) = presence::receipts_hidden_setting(iq) {
                    self.inner.presence.set_receipts_hidden(&jid.user, hidden);
                }
                stanza::iq_result(id, Vec::new())
            }
            ("w:sync:app:state", "set", Some("sync")) => {
                self.inner.app_state_sync_answer(jid, id, iq).await
            }
            ("md", "set", Some("remove-companion-device")) => {
                return self.on_remove_companion(link, jid, id, iq).await;
            }
            // Keepalive (`w:p`), `urn:xmpp:whatsapp:dirty` and everything
            // else this server does not model: an empty result.
            _ => {
                debug!(
                    xmlns,
                    kind,
                    child = first.unwrap_or(""),
                    "iq answered with an empty result"
                );
                stanza::iq_result(id, Vec::new())
            }
        };
        link.send_node(&reply).await?;
        Ok(Flow::Continue)
    }

    /// Messages, receipts and acks of a logged-in device.
    async fn on_device_stanza(
        &self,
        link: &mut Link,
        jid: &Jid,
        router: &mpsc::UnboundedSender<Routed>,
        node: &Node,
    ) -> Result<(), ConnError> {
        let registry = &self.inner.registry;
        match node.tag() {
            "message" if group_message::is_group_message(node) => {
                self.on_group_message(link, jid, router, node).await?;
            }
            "message" => match routing::parse_message(node) {
                Ok(message) => {
                    let now = unix_now();
                    match registry.accept_message(jid, &message.acceptance_key(), now) {
                        Acceptance::New => {
                            link.send_node(&routing::message_ack(&message.id, &message.to, now))
                                .await?;
                            // The routing task ends only after this session.
                            let _ = router.send(Routed::Message(message));
                        }
                        Acceptance::Repeat { t } => {
                            // Already routed: the sender only learns again
                            // that it was accepted, and when.
                            debug!("repeated message id acknowledged again");
                            link.send_node(&routing::message_ack(&message.id, &message.to, t))
                                .await?;
                        }
                    }
                }
                Err(err) => {
                    info!(%err, "message refused");
                    if let (Some(id), Some(to)) = (node.attr_string("id"), node.attr_jid("to")) {
                        let ack = routing::message_ack(&id, &to, unix_now()).attr("error", "400");
                        link.send_node(&ack).await?;
                    }
                }
            },
            "receipt" => match routing::parse_receipt(node) {
                Ok(receipt) => {
                    registry.acknowledge(jid, QueueClass::Message, &receipt.ids);
                    link.send_node(&routing::receipt_ack(&receipt)).await?;
                    let _ = router.send(Routed::Receipt(receipt));
                }
                Err(err) => info!(%err, "receipt refused"),
            },
            "ack" => match routing::parse_ack(node) {
                Some((class, id)) if class == "message" => {
                    registry.acknowledge(jid, QueueClass::Message, &[id]);
                }
                Some((class, id)) if class == "receipt" => {
                    registry.acknowledge(jid, QueueClass::Receipt, &[id]);
                }
                Some((class, id)) if class == "notification" => {
                    registry.acknowledge(jid, QueueClass::Notification, &[id]);
                }
                _ => {}
            },
            // Ephemeral: neither acknowledged nor queued.
            "chatstate" => match presence::parse_chat_state(node) {
                Ok(state) => {
                    let _ = router.send(Routed::ChatState(state));
                }
                Err(err) => debug!(%err, "chat state refused"),
            },
            "presence" => match presence::parse_presence(node) {
                Ok(ClientPresence::Available) => {
                    let _ = router.send(Routed::Presence(true));
                }
                Ok(ClientPresence::Unavailable) => {
                    let _ = router.send(Routed::Presence(false));
                }
                Ok(ClientPresence::Subscribe(to)) => {
                    // Answered at once with the current presence; changes
                    // follow while this connection lasts.
                    let known = registry.knows(&to);
                    let now = known
                        .then(|| self.inner.presence.subscribe(self.id, jid, &to.user))
                        .flatten();
                    if let Some(now) = now {
                        link.send_node(&now).await?;
                    }
                }
                Err(err) => debug!(%err, "presence refused"),
            },
            tag => debug!(tag, "stanza ignored"),
        }
        Ok(())
    }

    /// A message to a group: acked (with an error when the sender may not
    /// send there) and handed to the routing task for fan-out.
    async fn on_group_message(
        &self,
        link: &mut Link,
        jid: &Jid,
        router: &mpsc::UnboundedSender<Routed>,
        node: &Node,
    ) -> Result<(), ConnError> {
        let now = unix_now();
        let message = match group_message::parse_message(node) {
            Ok(message) => message,
            Err(err) => {
                info!(%err, "group message refused");
                if let (Some(id), Some(to)) = (node.attr_string("id"), node.attr_jid("to")) {
                    let ack = group_message::message_ack(&id, &to.user, now, Some(err.code().0));
                    link.send_node(&ack).await?;
                }
                return Ok(());
            }
        };
        if let Err(err) = self.inner.groups.check_sender(&message.group, &jid.user) {
            debug!(%err, "group message from a non-member");
            let ack =
                group_message::message_ack(&message.id, &message.group, now, Some(err.code().0));
            return link.send_node(&ack).await;
        }
        match self
            .inner
            .registry
            .accept_message(jid, &message.acceptance_key(), now)
        {
            Acceptance::New => {
                // Counted before the ack, so once the sender knows the
                // message was taken the count is already there.
                self.inner.registry.note_key_distributions(
                    message
                        .pairwise
                        .iter()
                        .filter(|(_, encs)| !encs.is_empty())
                        .map(|(device, _)| device),
                );
                if message.only.is_none() {
                    let bytes = crate::wa::binary::encode(node).len();
                    self.inner
                        .registry
                        .note_group_message_bytes(&message.group, bytes as u64);
                }
                let mut ack = group_message::message_ack(&message.id, &message.group, now, None);
                if node.attr_str("phash").is_some() {
                    if let Some(phash) = self.inner.group_phash(&message.group) {
                        ack.set_attr("phash", phash);
                    }
                }
                link.send_node(&ack).await?;
                // The routing task ends only after this session.
                let _ = router.send(Routed::GroupMessage(message));
            }
            Acceptance::Repeat { t } => {
                let ack = group_message::message_ack(&message.id, &message.group, t, None);
                link.send_node(&ack).await?;
            }
        }
        Ok(())
    }

    /// Logout: the companion unlinks itself (or another device of its account).
    async fn on_remove_companion(
        &self,
        link: &mut Link,
        jid: &Jid,
        id: &str,
        iq: &Node,
    ) -> Result<Flow, ConnError> {
        let target = iq
            .child("remove-companion-device")
            .and_then(|n| n.attr_jid("jid"))
            .unwrap_or_else(|| jid.clone());
        if target.user != jid.user || target.device == 0 {
            link.send_node(&stanza::iq_error(id, 403, "forbidden"))
                .await?;
            return Ok(Flow::Continue);
        }
        let target = Jid::with_device(target.user.clone(), target.device, DEFAULT_USER_SERVER);
        if !self.inner.registry.remove_device(&target) {
            link.send_node(&stanza::iq_error(id, 404, "item-not-found"))
                .await?;
            return Ok(Flow::Continue);
        }
        link.send_node(&stanza::iq_result(id, Vec::new())).await?;
        if target == *jid {
            link.terminate(Termination::DeviceRemoved).await?;
            return Ok(Flow::Stop);
        }
        for other in self.inner.registry.connections_of(&target) {
            let _ = other
                .send(Command::Terminate(Termination::DeviceRemoved))
                .await;
        }
        Ok(Flow::Continue)
    }
}

async fn on_command(link: &mut Link, role: &mut Role, command: Command) -> Result<Flow, ConnError> {
    match command {
        Command::PairSuccess { iq, reply } => {
            if let Role::Registration { awaiting, .. } = role {
                let id = iq.attr_string("id").unwrap_or_default();
                link.send_node(&iq).await?;
                *awaiting = Some((id, reply));
            }
            // A logged-in device cannot be paired again: dropping `reply`
            // tells the scanner the companion is gone.
            Ok(Flow::Continue)
        }
        Command::LinkCodeNotify {
            notification,
            finish,
        } => {
            if let Role::Registration { finishing, .. } = role {
                link.send_node(&notification).await?;
                *finishing = Some(finish);
            }
            Ok(Flow::Continue)
        }
        Command::Deliver(node) => {
            link.send_node(&node).await?;
            Ok(Flow::Continue)
        }
        Command::Terminate(how) => {
            link.terminate(how).await?;
            Ok(Flow::Stop)
        }
    }
}

/// What a `companion_hello` registers, if it is well formed: a phone-number
/// JID, an 80-byte wrapped key, and the noise key the companion connected
/// with (the server binds the new device to it).
fn companion_hello(reg: &Node, noise_key: &[u8; 32]) -> Option<PendingLinkCode> {
    let jid = reg.attr_jid("jid")?;
    if jid.server != DEFAULT_USER_SERVER {
        return None;
    }
    let phone: PhoneNumber = jid.user.parse().ok()?;
    let bytes = |tag: &str| reg.child(tag).and_then(Node::content_bytes);
    let wrapped = bytes("link_code_pairing_wrapped_companion_ephemeral_pub")?;
    if wrapped.len() != link_code::WRAPPED_KEY_LEN
        || bytes("companion_server_auth_key_pub")? != noise_key.as_slice()
    {
        return None;
    }
    Some(PendingLinkCode {
        phone,
        wrapped_ephemeral: wrapped.to_vec(),
        reference: Vec::new(),
        expires_at_ms: 0,
    })
}

/// Milliseconds since the Unix epoch by the host clock.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
