//! The OpenAPI document, derived from the handlers' annotations and the wire
//! types, served at `/openapi.json`. What every operation shares is added
//! in one place ([`document`]) rather than on each handler: the answers any
//! request may get (credentials, limits, an unavailable database, a body
//! too large or too slow), and `application/problem+json` as the type of
//! every problem.

use replyd_proto as proto;
use utoipa::OpenApi;

use super::{
    console, deliveries, endpoints, events, jobs, ops, queues, schedules, steer, workers, ws,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "replyd", description = "Asynchronous Request-Reply: 202 now, the result later."),
    paths(
        jobs::submit, jobs::submit_batch, jobs::status, jobs::result, jobs::cancel, jobs::delete, jobs::list, jobs::input,
        steer::retry, steer::bulk, queues::list, queues::pause, queues::resume,
        schedules::list, schedules::one, schedules::put, schedules::delete,
        console::portal_link,
        events::job_events, events::all_events, ws::upgrade,
        deliveries::of_job, deliveries::list, deliveries::retry, deliveries::retry_dead,
        endpoints::list, endpoints::pause, endpoints::resume,
        workers::lease, workers::heartbeat, workers::progress, workers::complete, workers::fail,
        workers::complete_many,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi, ops::jwks,
    ),
    components(schemas(
        proto::Job, proto::JobState, proto::Progress, proto::JobError, proto::Links, proto::Output, proto::OutputRequest,
        proto::SubmitRequest, proto::BatchJob, proto::BatchSubmitRequest, proto::BatchSubmitted,
        proto::BatchSubmitAnswer, proto::WebhookSpec, proto::JobList, proto::LeaseRequest,
        proto::Lease, proto::LeaseBatch, proto::LeaseAnswer, proto::HeartbeatRequest, proto::LeaseStatus,
        proto::ProgressRequest, proto::CompleteRequest, proto::FailRequest, proto::FailReason,
        proto::Outcome, proto::OutcomesRequest, proto::OutcomeAnswer, proto::OutcomesAnswer,
        proto::Problem, proto::Delivery, proto::DeliveryAttempt, proto::DeliveryList,
        proto::Endpoint, proto::EndpointList, proto::ResumeEndpoint,
        deliveries::ReplayRequest,
        proto::JobFilter, proto::BulkAction, proto::BulkRequest, proto::BulkRefusal, proto::BulkAnswer,
        proto::StateCounts, proto::Minute, proto::Queue, proto::QueueList,
        proto::PortalLinkRequest, proto::PortalLink,
        proto::ScheduleRequest, proto::Schedule, proto::ScheduleList,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key, or a job token (jt_...)"))
                    .build(),
            ),
        );
    }
}

/// The document as served.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    complete(&mut doc);
    doc
}

/// The answers an operation may get besides its own, and why.
fn shared_statuses(path: &str, has_body: bool) -> Vec<(u16, &'static str)> {
    let mut s = Vec::new();
    match path {
        "/healthz" | "/openapi.json" => {}
        "/readyz" => s.push((
            503,
            "The database does not answer, or the server is draining",
        )),
        "/v1/ws" => s.extend([
            (400, "Not a WebSocket handshake"),
            (
                401,
                "No or unknown credentials, or a job token that is not one",
            ),
            (403, "The credentials may not read"),
            (426, "Not a WebSocket handshake: upgrade required"),
            (429, "A limit of this client or tenant (limits.websockets)"),
            (503, "A server-wide limit (limits.websockets.total)"),
        ]),
        "/metrics" => s.extend([
            (401, "No or unknown credentials"),
            (403, "Not an admin key of every tenant"),
            (503, "The database is unavailable"),
        ]),
        _ => {
            s.extend([
                (400, "A malformed request: the problem says what and where"),
                (
                    401,
                    "No or unknown credentials (an API key in the URL is refused)",
                ),
                (403, "The credentials may not do this"),
                (
                    429,
                    "A limit of this client or tenant (limits.*): see Retry-After",
                ),
                (
                    503,
                    "The database is unavailable, or a server-wide limit: see Retry-After",
                ),
            ]);
            if path.starts_with("/v1/jobs/{id}") {
                s.extend([
                    (404, "No such job (or another tenant's)"),
                    (410, "The job's time to live has run out"),
                ]);
            }
            if has_body {
                s.extend([
                    (408, "The body did not arrive within limits.body_timeout"),
                    (413, "The body is larger than limits.max_body"),
                    (415, "The body is not JSON"),
                ]);
            }
        }
    }
    s
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// OpenAPI links: where an answer's ids lead (a client generator, or a
/// stateful test, follows them).
fn links(doc: &mut serde_json::Value) {
    use serde_json::json;
    let job = |id: &str| json!({"id": id});
    let submitted: serde_json::Map<String, serde_json::Value> = [
        "get_job",
        "get_result",
        "cancel_job",
        "delete_job",
        "job_deliveries",
    ]
    .iter()
    .map(|op| {
        (
            op.to_string(),
            json!({"operationId": op, "parameters": job("$response.body#/id")}),
        )
    })
    .collect();
    if let Some(r) = doc.pointer_mut("/paths/~1v1~1jobs/post/responses/202") {
        r["links"] = serde_json::Value::Object(submitted);
    }
    let leased: serde_json::Map<String, serde_json::Value> =
        ["heartbeat", "progress", "complete", "fail"]
            .iter()
            .map(|op| {
                (
                    op.to_string(),
                    json!({
                        "operationId": op,
                        "parameters": job("$response.body#/job/id"),
                        "requestBody": {"lease_id": "$response.body#/lease_id"},
                    }),
                )
            })
            .collect();
    if let Some(r) = doc.pointer_mut("/paths/~1v1~1queues~1{queue}~1lease/post/responses/200") {
        r["links"] = serde_json::Value::Object(leased);
    }
}

/// Adds the shared answers to every operation, and gives every problem
/// its media type.
fn complete(doc: &mut serde_json::Value) {
    links(doc);
    use serde_json::{Value, json};
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let has_body = op.get("requestBody").is_some();
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            for (status, why) in shared_statuses(path, has_body) {
                responses.entry(status.to_string()).or_insert_with(|| {
                    json!({
                        "description": why,
                        "content": {"application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }}
                    })
                });
            }
            for response in responses.values_mut() {
                let Some(content) = response.get_mut("content").and_then(Value::as_object_mut)
                else {
                    continue;
                };
                let is_problem = content
                    .get("application/json")
                    .and_then(|c| c.pointer("/schema/$ref"))
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.ends_with("/Problem"));
                if is_problem && let Some(c) = content.remove("application/json") {
                    content.insert("application/problem+json".into(), c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDKs under `clients/` are generated from and checked against
    /// `clients/openapi.json`; this keeps that file the served document, so
    /// that a change to the wire fails here until the snapshot (and then
    /// the SDKs' own drift checks) follow. `REPLYD_BLESS=1` rewrites it.
    #[test]
    fn the_clients_snapshot_is_the_served_document() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/openapi.json");
        let served = format!("{}\n", serde_json::to_string_pretty(&document()).unwrap());
        if std::env::var_os("REPLYD_BLESS").is_some() {
            std::fs::write(&path, &served).unwrap();
        }
        let snapshot = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            snapshot == served,
            "clients/openapi.json is not the served document: run \
             `REPLYD_BLESS=1 cargo test -p replyd-server --lib the_clients_snapshot`, then \
             regenerate the SDKs' models (clients/python/scripts/gen_models.py, \
             clients/typescript/scripts/gen-types.mjs)"
        );
    }

    #[test]
    fn every_operation_documents_its_problems_as_problem_json() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut checked = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let responses = op["responses"].as_object().unwrap();
                for (status, r) in responses {
                    if let Some(content) = r.get("content") {
                        assert!(
                            content.get("application/json").is_none_or(|c| {
                                c.pointer("/schema/$ref").and_then(|v| v.as_str())
                                    != Some("#/components/schemas/Problem")
                            }),
                            "{method} {path} {status}: a problem as application/json"
                        );
                    }
                }
                if path.starts_with("/v1/") {
                    for s in ["401", "403", "429", "503"] {
                        assert!(responses.contains_key(s), "{method} {path} lacks {s}");
                    }
                }
                if op.get("requestBody").is_some() {
                    assert!(responses.contains_key("413"), "{method} {path} lacks 413");
                }
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked}");
        let mut ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op.get("operationId")?.as_str())
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "operation ids must be unique: {ids:?}");
        // Every link names an operation that exists.
        let links = doc["paths"]["/v1/jobs"]["post"]["responses"]["202"]["links"]
            .as_object()
            .unwrap();
        assert!(links.len() >= 4);
        for l in links.values() {
            assert!(ids.contains(&l["operationId"].as_str().unwrap()), "{l}");
        }
        let submit = &doc["components"]["schemas"]["SubmitRequest"]["properties"];
        assert_eq!(submit["queue"]["maxLength"], 64);
        let lease = &doc["components"]["schemas"]["LeaseRequest"]["properties"];
        assert_eq!(lease["lease"]["maximum"], 3600);
        let progress = &doc["components"]["schemas"]["ProgressRequest"]["properties"];
        assert_eq!(progress["percent"]["maximum"], 100);
    }
}
