//! One large video out through the gateway: streamed to `UploadMedia` in
//! 1 MiB chunks made on the fly (the tool never holds the file), sent to
//! the session's peer, and the gateway's resident memory sampled the whole
//! time. The figure is the peak growth over the moment before: what a
//! 100 MB file costs a gateway that streams it (budget: 16 MiB).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::codegen::tokio_stream;

use crate::clients::{peer_phone, session_id, Gateway};
use crate::error::LoadError;
use crate::procs::within;
use crate::procstat;
use crate::proto::gateway::media::Source;
use crate::proto::gateway::{Media, MediaKind, SendRequest, UploadMediaChunk};

/// Bytes per UploadMedia message.
const CHUNK: usize = 1024 * 1024;
/// How often resident memory is read while the file goes out.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The upload and the Send, together, must finish within this.
const MEDIA_WITHIN: Duration = Duration::from_secs(600);

/// What one large send cost.
#[derive(Debug, Clone)]
pub(crate) struct MediaFigures {
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    /// `RssAnon` right before the upload began, KiB.
    pub(crate) anon_before_kib: u64,
    /// Highest `RssAnon` seen until the Send was acknowledged, KiB.
    pub(crate) anon_peak_kib: u64,
    /// Highest `VmRSS` growth seen, KiB (mapped files included).
    pub(crate) rss_growth_kib: u64,
}

/// The `i`th chunk of a `bytes`-long file: cheap, varied, not all zeros
/// (a compressible or zero page would cost less than real media).
fn chunk(i: usize, bytes: u64) -> Vec<u8> {
    let start = (i * CHUNK) as u64;
    let len = (bytes - start).min(CHUNK as u64) as usize;
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            // xorshift64: fast enough to keep up with the gateway.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Uploads and sends a `bytes`-long video from session 0 to its peer.
pub(crate) async fn send_video(
    gateway: &Gateway,
    gateway_pid: u32,
    bytes: u64,
) -> Result<MediaFigures, LoadError> {
    let before = procstat::memory(gateway_pid)?;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut anon, mut rss) = (before.anon_kib, before.rss_kib);
            // A sampling window that lasts as long as the send, not a
            // wait for something to happen.
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = procstat::memory(gateway_pid) {
                    anon = anon.max(m.anon_kib);
                    rss = rss.max(m.rss_kib);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            (anon, rss)
        })
    };
    let started = Instant::now();
    let chunks = (bytes as usize).div_ceil(CHUNK);
    let session = session_id(0);
    let first = session.clone();
    let stream = tokio_stream::iter((0..chunks).map(move |i| {
        let mut message = UploadMediaChunk {
            data: chunk(i, bytes),
            ..Default::default()
        };
        if i == 0 {
            message.session_id = first.clone();
            message.kind = MediaKind::Video as i32;
            message.mimetype = "video/mp4".into();
        }
        message
    }));
    let mut client = gateway.clone();
    let sent = within(MEDIA_WITHIN, "a 100 MB upload and Send", async {
        let handle = client
            .upload_media(stream)
            .await
            .map_err(LoadError::rpc("gateway UploadMedia"))?
            .into_inner();
        client
            .send(SendRequest {
                session_id: session.clone(),
                to: format!("+{}", peer_phone(0)),
                media: Some(Media {
                    kind: MediaKind::Video as i32,
                    source: Some(Source::Handle(handle.handle)),
                    caption: "load video".into(),
                    ..Default::default()
                }),
                idempotency_key: format!("load-video-{}", std::process::id()),
                ..Default::default()
            })
            .await
            .map_err(LoadError::rpc("gateway Send (video)"))
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (anon_peak, rss_peak) = sampler
        .await
        .map_err(|e| LoadError::Setup(format!("memory sampler: {e}")))?;
    sent??;
    Ok(MediaFigures {
        bytes,
        seconds,
        anon_before_kib: before.anon_kib,
        anon_peak_kib: anon_peak,
        rss_growth_kib: rss_peak.saturating_sub(before.rss_kib),
    })
}
