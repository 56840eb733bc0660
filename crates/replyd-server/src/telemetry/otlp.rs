//! Spans out over OTLP/HTTP with JSON bodies (the OpenTelemetry protocol's
//! JSON encoding: ids in hex, times in nanoseconds as strings), POSTed to
//! `[telemetry] otlp_endpoint`'s `/v1/traces`. Two tasks feed it: one
//! batches the spans this node records ([`run_queue`]), one reads the
//! event log while this node holds the cluster's lease on it
//! ([`run_log`]) and moves its cursor only once a batch's spans are
//! exported (or given up on), so a node's death re-exports rather than
//! loses them.

use std::sync::Arc;
use std::time::Duration;

use replyd_core::{Clock, EventId, Store, StoreError};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Span, Value, log};
use crate::cluster::{Cursor, Singleton};
use crate::config;

/// Spans in one export, at most.
const BATCH: usize = 512;
/// How long a recorded span may wait for a batch to fill.
const LINGER: Duration = Duration::from_secs(1);
/// Attempts at one export before its spans are dropped.
const TRIES: u32 = 3;
/// The lease on reading the log, and its cursor (the last event read).
const LEASE: &str = "telemetry_log_lease";
const CURSOR: Cursor = Cursor("telemetry_log_cursor");
const LEASE_FOR: Duration = Duration::from_secs(15);
/// How often the log is read when there was nothing new.
const POLL: Duration = Duration::from_millis(500);

/// Sends batches of spans to the collector.
pub struct Exporter {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    resource: Json,
}

impl Exporter {
    pub fn new(cfg: &config::Telemetry) -> Result<Exporter, String> {
        let url = cfg
            .traces_url()
            .ok_or("telemetry.otlp_endpoint is not set")?;
        let client = crate::outbound::client()
            .timeout(Duration::from_secs_f64(cfg.timeout))
            .user_agent(concat!("replyd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            ) else {
                return Err(format!("telemetry.headers: {k:?} is not a valid header"));
            };
            headers.insert(k, v);
        }
        let resource = json!({"attributes": [
            attr("service.name", &Value::Str(cfg.service_name.clone())),
            attr("service.version", &Value::Str(env!("CARGO_PKG_VERSION").into())),
            attr("service.instance.id", &Value::Str(uuid::Uuid::new_v4().to_string())),
        ]});
        Ok(Exporter {
            client,
            url,
            headers,
            resource,
        })
    }

    /// One request with these spans; `Err` says why it was not taken.
    pub async fn export(&self, spans: &[Span]) -> Result<(), String> {
        let body = encode(&self.resource, spans);
        let answer = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {}", answer.status()))
        }
    }

    /// Exports, trying again a little later on failure; drops the spans
    /// (counted) when every try failed.
    async fn export_or_drop(&self, spans: &[Span], shutdown: &CancellationToken) {
        for n in 1..=TRIES {
            match self.export(spans).await {
                Ok(()) => {
                    metrics::counter!("replyd_telemetry_spans_exported_total")
                        .increment(spans.len() as u64);
                    return;
                }
                Err(e) if n == TRIES => {
                    tracing::warn!(error = %e, spans = spans.len(), "telemetry: spans dropped");
                }
                Err(e) => tracing::debug!(error = %e, "telemetry: export failed, trying again"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(u64::from(n))) => {}
            }
        }
        metrics::counter!("replyd_telemetry_spans_dropped_total", "why" => "export_failed")
            .increment(spans.len() as u64);
    }
}

/// Exports the spans this node records, in batches, until shutdown (then
/// what is queued).
pub async fn run_queue(
    exporter: Arc<Exporter>,
    mut rx: mpsc::Receiver<Span>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            s = rx.recv() => s,
            () = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                _ => break,
            }
        }
        exporter.export_or_drop(&batch, &shutdown).await;
        batch.clear();
    }
    while let Ok(s) = rx.try_recv() {
        batch.push(s);
    }
    if !batch.is_empty() {
        let _ = exporter.export(&batch).await;
    }
}

/// Reads the event log while this node holds the lease on it, exporting
/// the spans its events end. The first node to read starts at the events
/// committed from then on.
pub async fn run_log(
    exporter: Arc<Exporter>,
    store: Arc<dyn Store>,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut bus = store.subscribe();
    let lease = Singleton::new(LEASE, LEASE_FOR);
    let mut more = false;
    loop {
        if !more {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
        let step = async {
            if !lease.hold(&*store, clock.now()).await? {
                return Ok::<_, StoreError>(false);
            }
            let cursor = match CURSOR.get(&*store).await? {
                Some(c) => c,
                None => {
                    // Start where the log is now: at the first event seen.
                    let first = tokio::select! {
                        () = shutdown.cancelled() => return Ok(false),
                        first = bus.recv() => first,
                    };
                    let Ok(first) = first else {
                        return Ok(false);
                    };
                    let Some(e) = first.first() else {
                        return Ok(false);
                    };
                    CURSOR.get_or_init(&*store, e.id.0 - 1).await?
                }
            };
            let events = store.log(Some(EventId(cursor.0)), BATCH as u32).await?;
            let Some(last) = events.last() else {
                return Ok(false);
            };
            let spans: Vec<Span> = events.iter().flat_map(log::spans_of).collect();
            if !spans.is_empty() {
                exporter.export_or_drop(&spans, &shutdown).await;
            }
            CURSOR.advance(&*store, &cursor, last.id.0).await?;
            Ok(events.len() == BATCH)
        };
        more = match step.await {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(error = %e, "telemetry: cannot read the event log");
                false
            }
        };
        // The bus only woke the first read; later ones poll.
        while bus.try_recv().is_ok() {}
    }
}

/// The OTLP JSON of `spans`, one resource and scope.
pub fn encode(resource: &Json, spans: &[Span]) -> Json {
    let spans: Vec<Json> = spans.iter().map(span).collect();
    json!({"resourceSpans": [{
        "resource": resource,
        "scopeSpans": [{
            "scope": {"name": "replyd", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans,
        }],
    }]})
}

fn span(s: &Span) -> Json {
    use replyd_core::trace::hex;
    let nanos = |t: chrono::DateTime<chrono::Utc>| {
        t.timestamp_nanos_opt()
            .unwrap_or_default()
            .max(0)
            .to_string()
    };
    let mut v = json!({
        "traceId": hex(&s.context.trace_id),
        "spanId": hex(&s.context.span_id),
        "name": s.name,
        "kind": s.kind as i32,
        "startTimeUnixNano": nanos(s.start),
        "endTimeUnixNano": nanos(s.end),
        "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
        "status": match &s.error {
            Some(m) => json!({"code": 2, "message": m}),
            None => json!({"code": 0}),
        },
    });
    if let Some(p) = s.parent {
        v["parentSpanId"] = hex(&p).into();
    }
    v
}

fn attr(key: &str, value: &Value) -> Json {
    let value = match value {
        Value::Str(s) => json!({"stringValue": s}),
        Value::Int(i) => json!({"intValue": i.to_string()}),
    };
    json!({"key": key, "value": value})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::SpanKind;
    use replyd_core::trace::parse_traceparent;

    #[test]
    fn spans_are_encoded_as_otlp_json() {
        let ctx =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 5).unwrap();
        let s = Span {
            name: "replyd.attempt",
            context: ctx,
            parent: Some([1, 2, 3, 4, 5, 6, 7, 8]),
            kind: SpanKind::Internal,
            start: t,
            end: t + chrono::Duration::milliseconds(3),
            attributes: vec![("replyd.attempt", Value::Int(2))],
            error: Some("boom".into()),
        };
        let doc = encode(&json!({"attributes": []}), &[s]);
        let got = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(got["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(got["spanId"], "00f067aa0ba902b7");
        assert_eq!(got["parentSpanId"], "0102030405060708");
        assert_eq!(got["startTimeUnixNano"], "1700000000000000005");
        assert_eq!(got["endTimeUnixNano"], "1700000000003000005");
        assert_eq!(got["kind"], 1);
        assert_eq!(got["status"]["code"], 2);
        assert_eq!(got["attributes"][0]["value"]["intValue"], "2");
    }
}
