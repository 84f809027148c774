//! The standard health service (`grpc.health.v1`), with Watch streams that
//! end when the gateway starts draining.
//!
//! tonic-health's own Watch stream lives as long as its status channel, i.e.
//! as long as the process: an open Watch (a load balancer, a sidecar) would
//! keep the server's graceful shutdown waiting for the whole grace period.
//! Here each Watch tells the watcher NOT_SERVING and then ends once draining
//! starts, so shutdown only waits for real calls.

use std::pin::Pin;

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// Fully qualified name of the public service (for health checks).
pub const GATEWAY_SERVICE: &str = "wagate.v1.Gateway";

/// Health of the gateway as probes see it (overall and `wagate.v1.Gateway`).
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    draining: watch::Sender<bool>,
}

impl Health {
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter
            .set_service_status(GATEWAY_SERVICE, status)
            .await;
    }

    /// Readiness alone: the status of `wagate.v1.Gateway`, which readiness probes ask for
    /// (liveness asks for the overall status, untouched here). Ignored once draining.
    pub async fn set_ready(&self, ready: bool) {
        if *self.draining.borrow() {
            return;
        }
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter
            .set_service_status(GATEWAY_SERVICE, status)
            .await;
    }

    /// NOT_SERVING from now on, and every open Watch ends after saying so.
    pub async fn drain(&self) {
        self.set(false).await;
        self.draining.send_replace(true);
    }
}

/// Creates the health service; it starts NOT_SERVING until [`Health::set`].
pub async fn health() -> (Health, HealthServer<HealthWatches>) {
    let (reporter, _) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        draining: watch::channel(false).0,
    };
    health.set(false).await;
    let service = health.watches();
    (health, HealthServer::new(service))
}

impl Health {
    fn watches(&self) -> HealthWatches {
        HealthWatches {
            inner: HealthService::from_health_reporter(self.reporter.clone()),
            draining: self.draining.subscribe(),
        }
    }
}

/// tonic-health's service, with Watch streams bounded by the drain.
pub struct HealthWatches {
    inner: HealthService,
    draining: watch::Receiver<bool>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthApi for HealthWatches {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(until_drained(
            statuses,
            self.draining.clone(),
        )))
    }
}

/// Forwards `statuses` until draining starts, then sends NOT_SERVING (unless
/// that was the last thing sent) and ends.
fn until_drained(
    statuses: impl Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static,
    draining: watch::Receiver<bool>,
) -> WatchStream {
    let not_serving = HealthCheckResponse {
        status: ServingStatus::NotServing as i32,
    };
    struct State<S> {
        statuses: Pin<Box<S>>,
        draining: watch::Receiver<bool>,
        last: Option<i32>,
        done: bool,
    }
    let state = State {
        statuses: Box::pin(statuses),
        draining,
        last: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        // Statuses first: a NOT_SERVING published before the drain signal
        // reaches the watcher as itself.
        let next = tokio::select! {
            biased;
            item = st.statuses.next() => Some(item),
            _ = st.draining.wait_for(|d| *d) => None,
        };
        match next {
            Some(Some(Ok(response))) => {
                st.last = Some(response.status);
                Some((Ok(response), st))
            }
            Some(Some(Err(e))) => Some((Err(e), st)),
            Some(None) => None,
            // Draining: say NOT_SERVING unless that was the last word, then end.
            None => {
                st.done = true;
                if st.last == Some(not_serving.status) {
                    None
                } else {
                    Some((Ok(not_serving), st))
                }
            }
        }
    });
    Box::pin(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watches_end_when_draining_starts() {
        let (health, _server) = health().await;
        health.set(true).await;
        let service = health.watches();
        let mut watch = service
            .watch(Request::new(HealthCheckRequest {
                service: GATEWAY_SERVICE.into(),
            }))
            .await
            .expect("watch")
            .into_inner();
        let first = watch.next().await.expect("first").expect("ok");
        assert_eq!(first.status, ServingStatus::Serving as i32);
        health.drain().await;
        let wait = std::time::Duration::from_secs(10);
        let next = tokio::time::timeout(wait, watch.next())
            .await
            .expect("in time")
            .expect("a last status")
            .expect("ok");
        assert_eq!(next.status, ServingStatus::NotServing as i32);
        let end = tokio::time::timeout(wait, watch.next())
            .await
            .expect("ends in time");
        assert!(end.is_none(), "the watch ends after NOT_SERVING");

        // A watch opened while draining says NOT_SERVING once and ends.
        let mut late = service
            .watch(Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .expect("watch")
            .into_inner();
        let only = late.next().await.expect("one status").expect("ok");
        assert_eq!(only.status, ServingStatus::NotServing as i32);
        assert!(late.next().await.is_none());
    }
}
