//! The OpenAPI document, derived from the handlers' annotations and the wire
//! types, served at `/openapi.json`.

use replyd_proto as proto;
use utoipa::OpenApi;

use crate::http::{deliveries, events, jobs, ops, workers, ws};

#[derive(OpenApi)]
#[openapi(
    info(title = "replyd", description = "Asynchronous Request-Reply: 202 now, the result later."),
    paths(
        jobs::submit, jobs::status, jobs::result, jobs::cancel, jobs::delete, jobs::list,
        events::job_events, events::all_events, ws::upgrade,
        deliveries::of_job, deliveries::list, deliveries::retry, deliveries::retry_dead,
        workers::lease, workers::heartbeat, workers::progress, workers::complete, workers::fail,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
    ),
    components(schemas(
        proto::Job, proto::JobState, proto::Progress, proto::JobError, proto::Links,
        proto::SubmitRequest, proto::WebhookSpec, proto::JobList, proto::LeaseRequest,
        proto::Lease, proto::LeaseBatch, proto::HeartbeatRequest, proto::LeaseStatus,
        proto::ProgressRequest, proto::CompleteRequest, proto::FailRequest, proto::FailReason,
        proto::Problem, proto::Delivery, proto::DeliveryAttempt, proto::DeliveryList,
        deliveries::ReplayRequest,
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
