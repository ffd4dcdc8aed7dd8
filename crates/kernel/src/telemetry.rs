//! Logs (JSON, or pretty on a terminal) and the Prometheus recorder.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global log subscriber once; later calls do nothing.
pub fn init_logging(filter: &str, format: LogFormat) {
    // PostgreSQL's notices ("schema … already exists, skipping") are noise at
    // info, unless the operator asks about sqlx explicitly.
    let quiet =
        if filter.contains("sqlx") { String::new() } else { ",sqlx::postgres::notice=warn".to_string() };
    let filter = EnvFilter::try_new(format!("{filter}{quiet}")).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide metrics handle (installed on first use).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_string()),
                    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("event_journal_batch_size".to_string()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
                    )
                });
            let Ok(builder) = builder else { return None };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                return None;
            }
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("http_requests_total", "HTTP requests answered, by method, route and status code.");
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method, route and status code."
    );
    describe_counter!(
        "events_published_total",
        "Events the outbox relay or a journal handed to the bus, by service or journal."
    );
    describe_counter!("events_consumed_total", "Events applied by consumers, by consumer.");
    describe_counter!("events_dead_lettered_total", "Events a consumer could not handle, by consumer.");
    describe_histogram!("event_journal_batch_size", "Events a journal published at once, by journal.");
    describe_counter!(
        "events_journal_unreadable_total",
        "Journal records that could not be decoded (skipped)."
    );
    describe_gauge!("signpost_up", "1 while the process serves requests.");
}
