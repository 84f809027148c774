//! `wagatectl`: drive a wagate gateway from the shell — create sessions,
//! link them by scanning a QR drawn in the terminal, follow events.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use wagatectl::client::{self, ApiKey, Gateway, DEFAULT_ADDR};
use wagatectl::error::{exit, CliError};
use wagatectl::output;
use wagatectl::proto::gateway::{
    event::Payload, events_request::Start, DisconnectRequest, EventType, EventsRequest,
    InitRequest, ListSessionsRequest, QrCodeRequest, SendRequest, SessionState, StatusRequest,
};
use wagatectl::qr::{self, Ink};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error (e.g. UNIMPLEMENTED, INTERNAL)
  2  usage error: bad flags, or arguments the gateway refuses (INVALID_ARGUMENT)
  3  no such session (NOT_FOUND)
  4  the session is in the wrong state (FAILED_PRECONDITION; `qr` on a stopped session)
  5  missing or wrong API key (UNAUTHENTICATED)
  6  the gateway cannot be reached or is not serving (UNAVAILABLE)";

#[derive(Parser)]
#[command(
    name = "wagatectl",
    version,
    about = "Command-line client for the wagate WhatsApp Web gateway",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Gateway address.
    #[arg(long, global = true, env = "WAGATE_ADDR", default_value = DEFAULT_ADDR)]
    addr: String,
    /// API key, sent as `x-api-key`.
    #[arg(long, global = true, env = "WAGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a session (or resume it) and start connecting it.
    Init {
        /// Session id: 1-64 characters of [A-Za-z0-9_-].
        id: String,
        /// A label kept with the session; repeatable.
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = key_value)]
        meta: Vec<(String, String)>,
    },
    /// Draw the session's QR code and redraw it as it rotates, until a phone
    /// scans it; then print the JID and exit.
    Qr {
        id: String,
        /// Paint the dark modules instead of the light ones (for terminals
        /// with a light background).
        #[arg(long)]
        invert: bool,
    },
    /// Show a session's state and identity.
    Status { id: String },
    /// List every session.
    List,
    /// Send a text message.
    Send {
        id: String,
        /// Recipient: an E.164 phone number (+15551234567) or a JID.
        to: String,
        text: String,
        /// Retries with the same key send nothing twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Follow events (from now, unless told where to start).
    Events(EventsArgs),
    /// Close a session's connection, keeping its credentials.
    Disconnect {
        id: String,
        /// Unlink the device from the account and erase its keys.
        #[arg(long)]
        logout: bool,
    },
}

#[derive(Args)]
struct EventsArgs {
    /// Only this session; repeatable.
    #[arg(long = "session", value_name = "ID")]
    sessions: Vec<String>,
    /// Only this event type; repeatable.
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<Kind>,
    /// Resume after this cursor (the last one processed).
    #[arg(long, value_name = "CURSOR", conflicts_with = "from_beginning")]
    after: Option<u64>,
    /// Replay everything still retained first.
    #[arg(long)]
    from_beginning: bool,
    /// Exit (status 0) after printing this many events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Qr,
    Connection,
    Message,
    Receipt,
    Group,
    ChatState,
    Presence,
    History,
    Contact,
    ChatSettings,
}

impl From<Kind> for EventType {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Qr => EventType::Qr,
            Kind::Connection => EventType::Connection,
            Kind::Message => EventType::Message,
            Kind::Receipt => EventType::Receipt,
            Kind::Group => EventType::Group,
            Kind::ChatState => EventType::ChatState,
            Kind::Presence => EventType::Presence,
            Kind::History => EventType::History,
            Kind::Contact => EventType::Contact,
            Kind::ChatSettings => EventType::ChatSettings,
        }
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Writes one line to stdout; a closed pipe surfaces as an error the caller
/// turns into a quiet exit.
fn line(text: impl std::fmt::Display) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let key = ApiKey::new(cli.api_key.as_deref())?;
    let mut gw = client::connect(&cli.addr, key).await?;
    let json = cli.json;
    let print_session = |s: &wagatectl::proto::gateway::Session| {
        if json {
            line(output::session_json(s))
        } else {
            line(output::session_text(s).trim_end())
        }
    };
    match cli.command {
        Command::Init { id, meta } => {
            let s = gw
                .init(InitRequest {
                    session_id: id,
                    metadata: meta.into_iter().collect(),
                    phone_number: String::new(),
                })
                .await?
                .into_inner();
            print_session(&s)
        }
        Command::Status { id } => {
            let s = gw
                .status(StatusRequest { session_id: id })
                .await?
                .into_inner();
            print_session(&s)
        }
        Command::Disconnect { id, logout } => {
            let s = gw
                .disconnect(DisconnectRequest {
                    session_id: id,
                    logout,
                })
                .await?
                .into_inner();
            print_session(&s)
        }
        Command::List => {
            let list = gw.list_sessions(ListSessionsRequest {}).await?.into_inner();
            if json {
                list.sessions
                    .iter()
                    .try_for_each(|s| line(output::session_json(s)))
            } else {
                line(output::session_table(&list.sessions).trim_end())
            }
        }
        Command::Send {
            id,
            to,
            text,
            idempotency_key,
        } => {
            let r = gw
                .send(SendRequest {
                    session_id: id,
                    to,
                    text,
                    idempotency_key: idempotency_key.unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if json {
                line(output::send_json(&r))
            } else {
                line(format!("sent {}", r.message_id))
            }
        }
        Command::Events(args) => events(&mut gw, args, json).await,
        Command::Qr { id, invert } => {
            let ink = if invert { Ink::Dark } else { Ink::Light };
            show_qr(&mut gw, id, ink, json).await
        }
    }
}

async fn events(gw: &mut Gateway, args: EventsArgs, json: bool) -> Result<(), CliError> {
    let start = match (args.after, args.from_beginning) {
        (Some(c), _) => Start::AfterCursor(c),
        (None, true) => Start::FromBeginning(true),
        (None, false) => Start::FromNow(true),
    };
    let mut stream = gw
        .events(EventsRequest {
            session_ids: args.sessions,
            types: args
                .types
                .into_iter()
                .map(|k| EventType::from(k) as i32)
                .collect(),
            start: Some(start),
        })
        .await?
        .into_inner();
    let mut printed = 0u64;
    if args.limit == Some(0) {
        return Ok(());
    }
    while let Some(e) = stream.message().await? {
        if json {
            line(output::event_json(&e))?;
        } else {
            line(output::event_text(&e))?;
        }
        printed += 1;
        if args.limit.is_some_and(|limit| printed >= limit) {
            return Ok(());
        }
    }
    Err(CliError::StreamEnded)
}

/// The QR on screen: remembers how many lines it drew so a terminal can be
/// redrawn in place.
struct QrScreen {
    session: String,
    ink: Ink,
    json: bool,
    in_place: bool,
    drawn: usize,
}

impl QrScreen {
    fn show(
        &mut self,
        code: &str,
        expires: Option<&prost_types::Timestamp>,
    ) -> Result<(), CliError> {
        let expires_at = expires.map(output::rfc3339);
        if self.json {
            return line(json!({
                "type": "qr",
                "session_id": self.session,
                "qr": code,
                "expires_at": expires_at,
            }));
        }
        let drawing = qr::draw(code, self.ink, qr::MIN_QUIET_ZONE)?;
        let mut text = String::new();
        if self.in_place && self.drawn > 0 {
            // Back to the top of the previous QR, then clear to the end.
            text.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        text.push_str(&drawing.to_string());
        text.push_str("Scan with WhatsApp: Settings > Linked devices > Link a device");
        if let Some(at) = &expires_at {
            text.push_str(&format!(" (expires {at})"));
        }
        text.push('\n');
        if !self.in_place {
            text.push('\n');
        }
        self.drawn = drawing.lines.len() + 1;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    fn connected(&self, jid: &str) -> Result<(), CliError> {
        if self.json {
            line(json!({ "type": "connected", "session_id": self.session, "jid": jid }))
        } else {
            line(format!("connected {jid}"))
        }
    }
}

async fn show_qr(gw: &mut Gateway, id: String, ink: Ink, json: bool) -> Result<(), CliError> {
    // Subscribe before looking at the state: nothing that happens in between
    // is missed.
    let mut stream = gw
        .events(EventsRequest {
            session_ids: vec![id.clone()],
            types: vec![EventType::Qr as i32, EventType::Connection as i32],
            start: Some(Start::FromNow(true)),
        })
        .await?
        .into_inner();
    let status = gw
        .status(StatusRequest {
            session_id: id.clone(),
        })
        .await?
        .into_inner();
    let mut screen = QrScreen {
        session: id.clone(),
        ink,
        json,
        in_place: std::io::stdout().is_terminal(),
        drawn: 0,
    };
    match SessionState::try_from(status.state) {
        Ok(SessionState::Connected) => return screen.connected(&status.jid),
        Ok(SessionState::QrReady) => {
            match gw
                .qr_code(QrCodeRequest {
                    session_id: id.clone(),
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    screen.show(&r.qr, r.expires_at.as_ref())?;
                }
                // It connected (or moved on) meanwhile; the events say how.
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
                Err(s) => return Err(s.into()),
            }
        }
        Ok(SessionState::Connecting) => {}
        _ => {
            return Err(CliError::WrongState(format!(
                "session {id} is {}; run `wagatectl init {id}` to connect it",
                output::state_name(status.state)
            )))
        }
    }
    while let Some(event) = stream.message().await? {
        match event.payload {
            Some(Payload::Qr(q)) => screen.show(&q.qr, q.expires_at.as_ref())?,
            Some(Payload::Connection(c)) => match SessionState::try_from(c.state) {
                Ok(SessionState::Connected) => return screen.connected(&c.jid),
                Ok(SessionState::Disconnected | SessionState::LoggedOut) => {
                    return Err(CliError::WrongState(format!(
                        "session {id} is {}: {}",
                        output::state_name(c.state),
                        c.reason
                    )))
                }
                _ => {}
            },
            // The qr command follows only the pairing.
            Some(
                Payload::Message(_)
                | Payload::Receipt(_)
                | Payload::Group(_)
                | Payload::ChatState(_)
                | Payload::Presence(_)
                | Payload::LinkCode(_)
                | Payload::History(_)
                | Payload::Contact(_)
                | Payload::ChatSettings(_),
            )
            | None => {}
        }
    }
    Err(CliError::StreamEnded)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wagatectl: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        // The reader went away (`wagatectl events | head`): not a failure.
        Err(CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("wagatectl: {}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}
