//! Logging and tracing set-up: structured logs (pretty or JSON) through
//! `tracing`, plus OpenTelemetry trace export over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Output format of the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Keeps the trace and metric exporters alive; flushes them on drop.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("wagate: flushing traces failed: {e}");
            }
        }
        if let Some(meters) = self.meters.take() {
            if let Err(e) = meters.shutdown() {
                eprintln!("wagate: flushing metrics failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Call once, inside a tokio runtime (the
/// OTLP exporter uses it).
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let endpoint_set = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .map(|v| !v.trim().is_empty())
        .unwrap_or(false);
    let mut provider = None;
    let mut export_error = None;
    let otel = if endpoint_set {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                let p = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service).build())
                    .build();
                let tracer = p.tracer(service);
                provider = Some(p);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                export_error = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    let mut meters = None;
    if endpoint_set {
        match opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                let m = SdkMeterProvider::builder()
                    .with_periodic_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service).build())
                    .build();
                crate::metrics::register_otel(&m.meter(service));
                meters = Some(m);
            }
            Err(e) => tracing::warn!("OpenTelemetry metrics export disabled: {e}"),
        }
    }
    if let Some(e) = export_error {
        tracing::warn!("OpenTelemetry export disabled: {e}");
    } else if provider.is_some() {
        tracing::info!("exporting traces and metrics over OTLP");
    }
    Telemetry { provider, meters }
}
