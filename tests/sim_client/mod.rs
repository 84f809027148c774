//! A bare WhatsApp Web client for simulator tests and benchmarks: the
//! protocol core's connection state machine over a websocket, paired by the
//! simulator's own phone, with no store and no gateway around it.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async_with_config, MaybeTlsStream, WebSocketStream};

use wagate::sim::Simulator;
use wagate::wa::binary::Node;
use wagate::wa::conn::{ClientConfig, CloseReason, Connection, Event};
use wagate::wa::creds::Credentials;
use wagate::wa::jid::PhoneNumber;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any one step (pairing, login, an expected stanza) may take.
pub const STEP: Duration = Duration::from_secs(30);

/// One client connection to the simulator.
pub struct Client {
    ws: Socket,
    conn: Connection,
}

/// Unix milliseconds: the core checks certificate validity with it.
fn unix_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes
}

impl Client {
    async fn connect(sim: &Simulator, creds: Credentials, seed: u64) -> Self {
        // A small read buffer: tungstenite zero-fills its free part before
        // every read, which would cost more than the client's real work.
        let config = WebSocketConfig::default().read_buffer_size(0x2000);
        let (ws, _) = connect_async_with_config(sim.ws_url(), Some(config), false)
            .await
            .expect("websocket connects");
        let config = ClientConfig {
            root_key: sim.root_public_key(),
            ..ClientConfig::default()
        };
        let conn = Connection::new(config, creds, seed_bytes(seed), unix_ms());
        Self { ws, conn }
    }

    fn now_ms(&self) -> u64 {
        unix_ms()
    }

    async fn flush(&mut self) {
        while let Some(bytes) = self.conn.poll_transmit() {
            // A send failure shows up as the socket closing on the next read.
            let _ = self.ws.send(Message::Binary(bytes.into())).await;
        }
    }

    /// The connection's next event, driving the socket and timers meanwhile.
    pub async fn next_event(&mut self) -> Event {
        loop {
            if let Some(event) = self.conn.poll_event() {
                return event;
            }
            self.flush().await;
            let wait = self
                .conn
                .poll_timeout()
                .map(|at| Duration::from_millis(at.saturating_sub(self.now_ms())))
                .unwrap_or(STEP);
            tokio::select! {
                message = self.ws.next() => match message {
                    Some(Ok(Message::Binary(data))) => {
                        let now = self.now_ms();
                        self.conn.handle_data(&data, now);
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => self.conn.handle_socket_closed("socket ended"),
                },
                _ = tokio::time::sleep(wait) => {
                    let now = self.now_ms();
                    self.conn.handle_timeout(now);
                }
            }
        }
    }

    /// A new companion paired with the account of `phone` (created if new)
    /// by the simulator's phone; returns its credentials, ready to log in.
    pub async fn pair(sim: &Simulator, phone: &str, seed: u64) -> Credentials {
        let mut rng = StdRng::seed_from_u64(seed);
        let creds = Credentials::generate(&mut rng);
        let mut client = Self::connect(sim, creds, seed).await;
        let phone: PhoneNumber = phone.parse().expect("valid phone number");
        let mut scan = None;
        let steps = async {
            loop {
                match client.next_event().await {
                    Event::Qr { code, .. } if scan.is_none() => {
                        let (sim, phone) = (sim.clone(), phone.clone());
                        scan = Some(tokio::spawn(async move {
                            sim.scan_qr(&phone, &code, "Client").await
                        }));
                    }
                    Event::Closed(CloseReason::RestartRequired) => break,
                    Event::Closed(other) => panic!("pairing ended: {other}"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(STEP, steps)
            .await
            .expect("paired in time");
        scan.expect("a QR code was shown")
            .await
            .expect("scan task")
            .expect("the phone scanned the QR code");
        client.conn.credentials().clone()
    }

    /// Logs in with paired credentials; returns once the server said success.
    pub async fn login(sim: &Simulator, creds: Credentials, seed: u64) -> Self {
        let mut client = Self::connect(sim, creds, seed).await;
        let steps = async {
            loop {
                match client.next_event().await {
                    Event::Connected { .. } => return,
                    Event::Closed(reason) => panic!("login ended: {reason}"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(STEP, steps)
            .await
            .expect("logged in in time");
        client.flush().await;
        client
    }

    pub fn credentials(&self) -> &Credentials {
        self.conn.credentials()
    }

    /// Sends a stanza.
    pub async fn send(&mut self, node: &Node) {
        self.conn.send_node(node).expect("logged in");
        self.flush().await;
    }

    /// Sends an iq and returns its id.
    pub async fn send_iq(&mut self, node: Node) -> String {
        let id = self.conn.send_iq(node).expect("logged in");
        self.flush().await;
        id
    }

    /// The next stanza matching `wanted`; others are skipped.
    pub async fn stanza(&mut self, what: &str, mut wanted: impl FnMut(&Node) -> bool) -> Node {
        let found = async {
            loop {
                match self.next_event().await {
                    Event::Stanza(node) if wanted(&node) => return node,
                    Event::Closed(reason) => panic!("closed while waiting for {what}: {reason}"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(STEP, found)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// The bare socket, for a reader that only counts what arrives.
    pub fn into_socket(self) -> Socket {
        self.ws
    }
}
