//! Logs and traces. Log lines go to stderr (text or JSON), filtered by `KESTREL_LOG`; with
//! `--otlp-endpoint` the same spans (a server request and its generation) are exported as
//! OpenTelemetry traces over OTLP/HTTP (JSON), parent to child, so a collector shows where a
//! request's time went.
//!
//! The exporter's own HTTP client logs through `tracing` too; only Kestrel's spans are exported,
//! or exporting a span would make more spans to export.

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::args::LogFormat;

/// Keeps the trace exporter running; dropping it sends the spans still buffered.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: the last traces could not be sent: {e}");
        }
    }
}

/// Installs the log (and trace) subscriber. `default` is the filter without `KESTREL_LOG`; a
/// `KESTREL_LOG` that is not a filter is reported and `default` kept. Fails only when the OTLP
/// endpoint is not a URL the exporter can use.
pub(crate) fn init(
    format: LogFormat,
    default: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Telemetry> {
    let (filter, rejected) = match std::env::var("KESTREL_LOG") {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(default), Some((spec, e))),
        },
        Err(_) => (EnvFilter::new(default), None),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => lines
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let provider = otlp_endpoint.map(tracer_provider).transpose()?;
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kestrel"))
            .with_filter(Targets::new().with_target("kestrel", Level::DEBUG))
    });
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(traces)
        .init();
    if let Some((spec, e)) = rejected {
        tracing::warn!(
            "KESTREL_LOG={spec:?} is not a log filter ({e}); showing warnings and errors"
        );
    }
    Ok(Telemetry { provider })
}

/// An exporter to `endpoint`: a collector's base URL (`http://host:4318`, where `/v1/traces` is
/// added) or the traces URL itself.
fn tracer_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let url = reqwest_url(endpoint)?;
    // The workspace's HTTP clients share one TLS provider, installed by whoever needs it first
    // (an https collector does).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint}: cannot start the exporter"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("kestrel")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The traces URL for `endpoint`, or an error naming what is wrong with it.
fn reqwest_url(endpoint: &str) -> anyhow::Result<String> {
    let trimmed = endpoint.trim_end_matches('/');
    let scheme_ok = trimmed.starts_with("http://") || trimmed.starts_with("https://");
    if !scheme_ok || trimmed.len() <= "https://".len() {
        anyhow::bail!(
            "--otlp-endpoint {endpoint:?} is not an http:// or https:// URL (an OTLP/HTTP \
             collector, such as http://localhost:4318)"
        );
    }
    Ok(if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_once() {
        let url = |e: &str| reqwest_url(e).expect(e);
        assert_eq!(
            url("http://localhost:4318"),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(url("https://c/v1/traces"), "https://c/v1/traces");
        for bad in ["localhost:4318", "grpc://c:4317", "http://"] {
            let e = reqwest_url(bad).expect_err(bad).to_string();
            assert!(e.contains("--otlp-endpoint"), "{e}");
        }
    }
}
