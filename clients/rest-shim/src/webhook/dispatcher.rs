//! Turns the gateway's `Events` stream into webhooks: at least once, in order
//! per session, resumed from the stored cursors after a restart.
//!
//! One reader follows every session's events and hands each to its
//! session's worker through a short queue. A worker delivers its session's
//! events one at a time (an event is done when each of its webhooks is
//! delivered or refused for good) and records the cursor. A session whose
//! receiver is down must not hold the others back, so when its queue is full
//! the reader stops queueing for it and only notes how far the session got;
//! the worker then catches up from the gateway's log with its own `Events`
//! stream for that session, and takes the queue back once it has delivered
//! everything the reader saw. Events at or below a worker's cursor are
//! skipped, so the hand-over and a restart never deliver an event twice in
//! one run.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tonic::Code;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::proto::gateway::event::Payload;
use crate::proto::gateway::Event;
use crate::state::Store;
use crate::time::ms_of;

use super::formats::{deliveries, wants, Targets, WwebjsMedia};
use super::sender::{Meta, Outcome, Sender};

/// Incoming media files downloaded for webhooks at once.
const MEDIA_AT_ONCE: usize = 4;

/// Reconnect delays of the streams to the gateway.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

struct Slot {
    queue: VecDeque<Event>,
    /// The queue overflowed: the worker reads from the log until it has
    /// delivered `seen`.
    behind: bool,
    /// Cursor of the last event of this session the reader saw.
    seen: u64,
    wake: Arc<Notify>,
}

struct Shared {
    gateway: Gateway,
    store: Arc<Store>,
    config: Arc<Config>,
    sender: Sender,
    /// Base of the `fileUrl` of saved incoming media.
    public_url: String,
    /// Incoming files being downloaded at once across all sessions'
    /// workers (each is read into memory, up to the media limit).
    downloads: tokio::sync::Semaphore,
    slots: Mutex<HashMap<String, Slot>>,
    stop: watch::Receiver<bool>,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Slots are updated field by field; a panic cannot leave one torn.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn targets(&self, session: &str) -> Targets {
        let settings = self.store.settings(session).unwrap_or_default();
        Targets {
            venom: settings.webhook_url,
            wwebjs: self
                .store
                .global_webhook()
                .or_else(|| self.config.webhook_url.clone()),
            wwebjs_hook: settings.hook,
            qr_backend: self.config.backend_url.clone(),
            baileys: self.config.api_url.clone(),
        }
    }
}

/// Runs until `stop` turns true.
pub(crate) async fn run(
    gateway: Gateway,
    store: Arc<Store>,
    config: Arc<Config>,
    sender: Sender,
    public_url: String,
    stop: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) {
    let shared = Arc::new(Shared {
        gateway,
        store,
        config,
        sender,
        public_url,
        downloads: tokio::sync::Semaphore::new(MEDIA_AT_ONCE),
        slots: Mutex::new(HashMap::new()),
        stop,
    });
    let mut from_beginning = false;
    loop {
        match epoch(&shared, from_beginning, &ready).await {
            Epoch::Stopped => return,
            Epoch::LogReset => {
                from_beginning = true;
                tracing::error!(
                    "the gateway's event log is behind the shim's stored cursor (was the gateway's data reset?); delivering its log from the beginning"
                );
                shared.slots().clear();
                shared.store.reset_delivery();
            }
        }
    }
}

enum Epoch {
    Stopped,
    LogReset,
}

/// Workers for the sessions already known, then the reader, until a stop or
/// a reset of the gateway's log.
async fn epoch(shared: &Arc<Shared>, from_beginning: bool, ready: &watch::Sender<bool>) -> Epoch {
    let mut workers = JoinSet::new();
    for (session, progress) in shared.store.all_progress() {
        shared.slots().insert(
            session.clone(),
            Slot {
                queue: VecDeque::new(),
                behind: progress.delivered < progress.seen,
                seen: progress.seen,
                wake: Arc::new(Notify::new()),
            },
        );
        workers.spawn(worker(shared.clone(), session));
    }
    let result = reader(shared, &mut workers, from_beginning, ready).await;
    workers.abort_all();
    while workers.join_next().await.is_some() {}
    result
}

/// Follows every session's events; `ready` turns true once the first
/// attempt to open the stream is answered (if it opened, its start is then
/// pinned in the gateway's log).
async fn reader(
    shared: &Arc<Shared>,
    workers: &mut JoinSet<()>,
    from_beginning: bool,
    ready: &watch::Sender<bool>,
) -> Epoch {
    let mut stop = shared.stop.clone();
    let mut delay = RECONNECT_MIN;
    loop {
        if *stop.borrow() {
            return Epoch::Stopped;
        }
        // A shim that never read starts from now: webhooks are for what
        // happens once it runs, not for the gateway's whole history.
        let cursor = shared.store.cursor().or(from_beginning.then_some(0));
        let opened = tokio::select! {
            r = shared.gateway.events(Vec::new(), Vec::new(), cursor) => r,
            _ = stop.wait_for(|s| *s) => return Epoch::Stopped,
        };
        // Whatever the outcome, the first attempt is made: start() need not
        // wait any longer.
        ready.send_replace(true);
        let mut stream = match opened {
            Ok(s) => s,
            Err(status) if is_log_reset(&status) => return Epoch::LogReset,
            Err(status) => {
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot follow the gateway's events: {}",
                    status.message()
                );
                if pause(&mut stop, &mut delay).await {
                    return Epoch::Stopped;
                }
                continue;
            }
        };
        tracing::info!(
            after_cursor = cursor.unwrap_or(0),
            "following the gateway's events"
        );
        loop {
            let next = tokio::select! {
                n = stream.message() => n,
                _ = stop.wait_for(|s| *s) => return Epoch::Stopped,
            };
            match next {
                Ok(Some(event)) => {
                    delay = RECONNECT_MIN;
                    dispatch(shared, workers, event);
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!("event stream ended: {}", status.message());
                    break;
                }
            }
        }
        if pause(&mut stop, &mut delay).await {
            return Epoch::Stopped;
        }
    }
}

fn dispatch(shared: &Arc<Shared>, workers: &mut JoinSet<()>, event: Event) {
    let session = event.session_id.clone();
    let is_message = matches!(event.payload, Some(Payload::Message(_)));
    shared.store.record_seen(
        &session,
        event.cursor,
        ms_of(event.timestamp.as_ref()),
        is_message,
    );
    let mut slots = shared.slots();
    let slot = slots.entry(session.clone()).or_insert_with(|| {
        workers.spawn(worker(shared.clone(), session.clone()));
        Slot {
            queue: VecDeque::new(),
            behind: false,
            seen: 0,
            wake: Arc::new(Notify::new()),
        }
    });
    slot.seen = slot.seen.max(event.cursor);
    if !slot.behind {
        if slot.queue.len() < shared.config.webhook_queue.max(1) {
            slot.queue.push_back(event);
        } else {
            slot.behind = true;
        }
    }
    slot.wake.notify_one();
}

enum Next {
    Event(Box<Event>),
    CatchUp,
    Wait(Arc<Notify>),
    Gone,
}

/// Delivers one session's events in order.
async fn worker(shared: Arc<Shared>, session: String) {
    let progress = shared.store.progress(&session).unwrap_or_default();
    let mut w = Worker {
        shared: shared.clone(),
        session,
        delivered: progress.delivered,
        qr_announced: progress.qr_announced,
        stop: shared.stop.clone(),
    };
    loop {
        let next = {
            let mut slots = shared.slots();
            match slots.get_mut(&w.session) {
                None => Next::Gone,
                Some(slot) => match slot.queue.pop_front() {
                    Some(event) => Next::Event(Box::new(event)),
                    None if slot.behind => Next::CatchUp,
                    None => Next::Wait(slot.wake.clone()),
                },
            }
        };
        let carry_on = match next {
            Next::Gone => false,
            Next::Event(event) => w.process(&event).await,
            Next::CatchUp => w.catch_up().await,
            Next::Wait(wake) => {
                let mut stop = w.stop.clone();
                tokio::select! {
                    _ = wake.notified() => true,
                    _ = stop.wait_for(|s| *s) => false,
                }
            }
        };
        if !carry_on {
            return;
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    session: String,
    delivered: u64,
    qr_announced: bool,
    stop: watch::Receiver<bool>,
}

impl Worker {
    /// Delivers `event`'s webhooks; false when the shim is stopping.
    async fn process(&mut self, event: &Event) -> bool {
        if event.cursor <= self.delivered {
            return true;
        }
        let targets = self.shared.targets(&self.session);
        let mut qr_announced = self.qr_announced;
        let media = self.media_of(event, &targets).await;
        let planned = deliveries(event, &targets, &media, &mut qr_announced);
        for (part, delivery) in planned.iter().enumerate() {
            let event_id = format!("{}-{}", event.cursor, part);
            let meta = Meta {
                event_id: &event_id,
                session: &self.session,
            };
            if self
                .shared
                .sender
                .deliver(delivery, &meta, &mut self.stop)
                .await
                == Outcome::Stopped
            {
                return false;
            }
        }
        self.delivered = event.cursor;
        self.qr_announced = qr_announced;
        self.shared
            .store
            .record_delivered(&self.session, event.cursor, qr_announced);
        true
    }

    /// The whatsapp-web.js `media` of a message event, for the targets that
    /// want it: its bytes from DownloadMedia, inline (base64) for the
    /// global webhook, saved under `uploads/` for the production variant's.
    /// A failed download is reported in `media.error`; the event still goes.
    async fn media_of(&self, event: &Event, targets: &Targets) -> WwebjsMedia {
        let mut out = WwebjsMedia::default();
        let Some(Payload::Message(msg)) = &event.payload else {
            return out;
        };
        let Some(info) = &msg.media else {
            return out;
        };
        let hook_event = if msg.from_me {
            "message-from-me"
        } else {
            "message-received"
        };
        let inline = targets.wwebjs.is_some() && !msg.from_me;
        let file = targets
            .wwebjs_hook
            .as_ref()
            .is_some_and(|h| wants(h, hook_event));
        if !inline && !file {
            return out;
        }
        let max = self.shared.config.max_media_bytes;
        // Held while downloading and saving; the semaphore is never closed.
        let _permit = self.shared.downloads.acquire().await.ok();
        let downloaded = if info.file_length > max {
            Err(format!(
                "the file has {} bytes, more than the limit of {max} (--max-media-bytes)",
                info.file_length
            ))
        } else {
            self.shared
                .gateway
                .download_media(&self.session, &msg.id, max)
                .await
                .map_err(|s| format!("download failed: {}", s.message()))
        };
        if let Err(e) = &downloaded {
            tracing::warn!(session = %self.session, id = %msg.id, "incoming media not attached: {e}");
        }
        let original = (!info.file_name.is_empty()).then(|| info.file_name.clone());
        if inline {
            out.inline = match &downloaded {
                Ok(d) => serde_json::json!({
                    "mimetype": info.mimetype,
                    "data": base64::engine::general_purpose::STANDARD.encode(&d.data),
                    "filename": original,
                }),
                Err(e) => serde_json::json!({
                    "mimetype": info.mimetype,
                    "data": null,
                    "filename": original,
                    "error": e,
                }),
            };
        }
        if file {
            let saved = match &downloaded {
                Ok(d) => crate::media::save_upload(
                    &self.shared.config.data_dir,
                    crate::time::now_ms(),
                    &info.mimetype,
                    &d.data,
                )
                .await
                .map(|name| (name, d.data.len()))
                .map_err(|e| format!("saving the file failed: {e}")),
                Err(e) => Err(e.clone()),
            };
            out.file = match saved {
                Ok((name, size)) => serde_json::json!({
                    "fileUrl": format!("{}/uploads/{name}", self.shared.public_url),
                    "fileName": name,
                    "originalName": original.unwrap_or_else(|| name.clone()),
                    "mimetype": info.mimetype,
                    "fileSize": size,
                }),
                Err(e) => serde_json::json!({
                    "fileUrl": null,
                    "fileName": null,
                    "originalName": original,
                    "mimetype": info.mimetype,
                    "fileSize": info.file_length,
                    "error": e,
                }),
            };
        }
        out
    }

    /// Whether everything the reader saw is delivered; if so, the queue is
    /// this worker's source again.
    fn caught_up(&self) -> bool {
        let mut slots = self.shared.slots();
        match slots.get_mut(&self.session) {
            Some(slot) if self.delivered >= slot.seen => {
                slot.behind = false;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Reads this session's events from the log after the worker's cursor
    /// until it has delivered what the reader saw; false when stopping.
    async fn catch_up(&mut self) -> bool {
        let mut delay = RECONNECT_MIN;
        loop {
            if self.caught_up() {
                return true;
            }
            let mut stop = self.stop.clone();
            let opened = tokio::select! {
                r = self.shared.gateway.events(vec![self.session.clone()], Vec::new(), Some(self.delivered)) => r,
                _ = stop.wait_for(|s| *s) => return false,
            };
            match opened {
                Ok(mut stream) => loop {
                    let next = tokio::select! {
                        n = stream.message() => n,
                        _ = stop.wait_for(|s| *s) => return false,
                    };
                    match next {
                        Ok(Some(event)) => {
                            delay = RECONNECT_MIN;
                            if !self.process(&event).await {
                                return false;
                            }
                            if self.caught_up() {
                                return true;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(session = %self.session, "catch-up stream ended: {}", status.message());
                            break;
                        }
                    }
                },
                Err(status) => {
                    tracing::warn!(session = %self.session, "cannot read the session's events: {}", status.message());
                }
            }
            if pause(&mut stop, &mut delay).await {
                return false;
            }
        }
    }
}

/// The gateway refuses a cursor beyond the end of its log.
fn is_log_reset(status: &tonic::Status) -> bool {
    status.code() == Code::InvalidArgument && status.message().contains("beyond the end")
}

/// Waits `delay` (then doubles it, capped); true when stopping.
async fn pause(stop: &mut watch::Receiver<bool>, delay: &mut Duration) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(RECONNECT_MAX);
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}
