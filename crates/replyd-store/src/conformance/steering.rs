//! Conformance: what an operator's console asks of a store — finding jobs
//! by any filter, newest first, within a bounded scan; pausing a queue;
//! pausing an endpoint by hand.

use std::sync::Arc;
use std::time::Duration;

use replyd_core::job::{Command, JobError, JobState};
use replyd_core::outbox::{AfterAttempt, Channel, DeliveryState};
use replyd_core::store::{JobPage, LeaseQuery, ListQuery, Outcome, Store};
use replyd_core::{JobId, Tenant};

use super::{attempt, lease_one, lq, new_job, owing, t};

async fn page(store: &dyn Store, q: ListQuery) -> JobPage {
    store.list(q).await.unwrap()
}

fn ids(p: &JobPage) -> Vec<JobId> {
    p.jobs.iter().map(|j| j.id).collect()
}

pub async fn list_filters_by_time_key_text_and_state_within_a_bounded_scan(store: Arc<dyn Store>) {
    let tenant = Some(Tenant("t".into()));
    let mut made = Vec::new();
    for (i, body) in [
        r#"{"customer":"acme-1"}"#,
        r#"{"customer":"globex"}"#,
        r#"{"customer":"ACME-2","note":"100%_done"}"#,
        r#"{"customer":"initech"}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("key-{i}");
        let job = store
            .submit(new_job("t", "q", Some(&key), body), t(i as i64))
            .await
            .unwrap()
            .job()
            .clone();
        made.push(job.id);
        // Ids carry their creation time in milliseconds: keep them apart.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    store
        .submit(
            new_job("u", "q", Some("key-0"), r#"{"customer":"acme-9"}"#),
            t(9),
        )
        .await
        .unwrap();
    // The third fails with a message to search for.
    let (id, lease) = lease_one(&*store, "q", t(10)).await;
    assert_eq!(id, made[0]);
    store
        .apply(
            id,
            None,
            Command::Fail {
                lease_id: lease,
                error: JobError::new("boom", "the Upstream said NO"),
                retry: false,
            },
            None,
            t(11),
        )
        .await
        .unwrap();
    let all = ListQuery {
        tenant: tenant.clone(),
        limit: 50,
        ..Default::default()
    };

    // Text: input and error message, ASCII case-insensitive, wildcards
    // taken literally.
    let acme = page(
        &*store,
        ListQuery {
            text: Some("acme".into()),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(ids(&acme), vec![made[2], made[0]]);
    assert_eq!(acme.next, None, "the scan reached the end: no next page");
    let literal = page(
        &*store,
        ListQuery {
            text: Some("0%_d".into()),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(ids(&literal), vec![made[2]]);
    let wildcard = page(
        &*store,
        ListQuery {
            text: Some("c%e".into()),
            ..all.clone()
        },
    )
    .await;
    assert!(
        wildcard.jobs.is_empty(),
        "% is not a wildcard: {:?}",
        ids(&wildcard)
    );
    let said_no = page(
        &*store,
        ListQuery {
            text: Some("upstream said no".into()),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(ids(&said_no), vec![made[0]]);

    // State and queue.
    let failed = page(
        &*store,
        ListQuery {
            state: Some(JobState::Failed),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(ids(&failed), vec![made[0]]);
    let other_queue = page(
        &*store,
        ListQuery {
            queue: Some("nope".into()),
            ..all.clone()
        },
    )
    .await;
    assert!(other_queue.jobs.is_empty());

    // The idempotency key, in a tenant or in all of them.
    let keyed = page(
        &*store,
        ListQuery {
            idempotency_key: Some("key-1".into()),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(ids(&keyed), vec![made[1]]);
    let everywhere = page(
        &*store,
        ListQuery {
            tenant: None,
            idempotency_key: Some("key-0".into()),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(everywhere.jobs.len(), 2);

    // A time range: from the second job's creation to the fourth's.
    let at = |id: JobId| {
        let (secs, nanos) = id.0.get_timestamp().unwrap().to_unix();
        chrono::DateTime::from_timestamp(secs as i64, nanos).unwrap()
    };
    let range = page(
        &*store,
        ListQuery {
            since: Some(at(made[1])),
            until: Some(at(made[3])),
            ..all.clone()
        },
    )
    .await;
    assert_eq!(ids(&range), vec![made[2], made[1]]);

    // A bounded scan: two rows read per page, matches or not; the cursor
    // goes on from the last row read, and the pages add up to the whole.
    let bounded = ListQuery {
        text: Some("acme".into()),
        scan: Some(2),
        ..all.clone()
    };
    let first = page(&*store, bounded.clone()).await;
    assert_eq!(ids(&first), vec![made[2]], "rows 4 and 3 read");
    assert_eq!(first.next, Some(made[2]));
    let second = page(
        &*store,
        ListQuery {
            before: first.next,
            ..bounded.clone()
        },
    )
    .await;
    assert_eq!(ids(&second), vec![made[0]], "rows 2 and 1 read");
    assert_eq!(second.next, Some(made[0]), "the scan stopped at its bound");
    let third = page(
        &*store,
        ListQuery {
            before: second.next,
            ..bounded
        },
    )
    .await;
    assert!(third.jobs.is_empty() && third.next.is_none());

    // A full page says where the next one starts.
    let two = page(&*store, ListQuery { limit: 2, ..all }).await;
    assert_eq!(ids(&two), vec![made[3], made[2]]);
    assert_eq!(two.next, Some(made[2]));
}

pub async fn a_paused_queue_leases_nothing_until_resumed(store: Arc<dyn Store>) {
    store
        .submit(new_job("t", "q", None, "{}"), t(0))
        .await
        .unwrap();
    assert!(store.pause_queue("q", true, t(1)).await.unwrap());
    assert!(
        !store.pause_queue("q", true, t(2)).await.unwrap(),
        "already paused"
    );
    assert_eq!(
        store.paused_queues().await.unwrap(),
        vec![("q".to_string(), t(1))]
    );
    assert!(store.lease(lq("q", 10), t(3)).await.unwrap().is_empty());
    let by_tenant = LeaseQuery {
        tenant: Some(Tenant("t".into())),
        ..lq("q", 10)
    };
    assert!(store.lease(by_tenant, t(3)).await.unwrap().is_empty());
    assert_eq!(
        store.next_run_at("q").await.unwrap(),
        None,
        "a paused queue has nothing coming (a waiting lease sleeps)"
    );
    // Other queues are not paused.
    store
        .submit(new_job("t", "r", None, "{}"), t(4))
        .await
        .unwrap();
    assert_eq!(store.lease(lq("r", 10), t(5)).await.unwrap().len(), 1);

    assert!(store.pause_queue("q", false, t(6)).await.unwrap());
    assert!(
        !store.pause_queue("q", false, t(6)).await.unwrap(),
        "not paused"
    );
    assert!(store.paused_queues().await.unwrap().is_empty());
    assert_eq!(store.lease(lq("q", 10), t(7)).await.unwrap().len(), 1);
}

pub async fn an_endpoint_paused_by_hand_holds_its_deliveries_until_resumed(store: Arc<dyn Store>) {
    let tenant = Tenant("t".into());
    let url = "https://hooks.test/x";
    store
        .pause_endpoint(&tenant, Channel::Webhook, url, t(1))
        .await
        .unwrap();
    store
        .pause_endpoint(&tenant, Channel::Webhook, url, t(2))
        .await
        .unwrap();
    let endpoints = store.endpoints(Some(tenant.clone())).await.unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].paused_at, Some(t(1)), "the first pause stands");
    let job = owing(&*store, "t").await;
    let claimed = store
        .claim_deliveries(Channel::Webhook, t(3), Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert!(claimed.is_empty(), "a paused endpoint's delivery is held");
    let held = store.deliveries(job).await.unwrap();
    assert_eq!(held[0].0.state, DeliveryState::Held);
    assert_eq!(
        store
            .resume_endpoint(&tenant, Channel::Webhook, url, t(4))
            .await
            .unwrap(),
        1
    );
    let claimed = store
        .claim_deliveries(Channel::Webhook, t(5), Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    store
        .record_attempts(
            vec![Outcome {
                delivery: claimed[0].delivery.id,
                attempt: attempt(t(5), Some(200)),
                after: AfterAttempt::Delivered,
            }],
            Default::default(),
        )
        .await
        .unwrap();
}
