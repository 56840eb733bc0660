//! Conformance: what operators watch (`replyd_core::ops`).

use std::sync::Arc;
use std::time::Duration;

use replyd_core::ops::{OpsKind, Watch};
use replyd_core::outbox::{AfterAttempt, Channel, DeliveryState};
use replyd_core::store::{Outcome, Store, StoreError};
use replyd_core::{JobId, Tenant};

use super::{attempt, owing, t};

const URL: &str = "https://hooks.test/x";

async fn claim(store: &dyn Store, at: i64) -> Vec<i64> {
    store
        .claim_deliveries(Channel::Webhook, t(at), Duration::from_secs(30), 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.delivery.id)
        .collect()
}

async fn outcome(store: &dyn Store, delivery: i64, after: AfterAttempt, at: i64, w: Watch) {
    let status = if after == AfterAttempt::Delivered {
        200
    } else {
        500
    };
    store
        .record_attempts(
            vec![Outcome {
                delivery,
                attempt: attempt(t(at), Some(status)),
                after,
            }],
            w,
        )
        .await
        .unwrap();
}

async fn kinds(store: &dyn Store, after: i64, tenant: &str) -> Vec<OpsKind> {
    store
        .ops_events(after, Some(Tenant(tenant.into())), 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect()
}

pub async fn dead_letters_pause_their_endpoint_which_holds_then_resumes_in_order(
    store: Arc<dyn Store>,
) {
    let w = Watch {
        disable_after: 2,
        dlq_threshold: 2,
    };
    let tenant = Tenant("t".into());
    let (a, b, c) = (
        owing(&*store, "t").await,
        owing(&*store, "t").await,
        owing(&*store, "t").await,
    );
    let other = owing(&*store, "u").await;
    let claimed = claim(&*store, 2).await;
    assert_eq!(claimed.len(), 4);
    let of = |job: JobId| {
        let store = store.clone();
        async move { store.deliveries(job).await.unwrap()[0].0.id }
    };
    let (da, db, dc, du) = (of(a).await, of(b).await, of(c).await, of(other).await);

    // One dead letter: counted, told, the endpoint not yet paused.
    outcome(&*store, da, AfterAttempt::Dead, 3, w).await;
    let dead = store.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].channel, &dead[0].tenant, dead[0].count),
        (Channel::Webhook, &tenant, 1)
    );
    assert_eq!(dead[0].oldest, Some(t(3)));
    assert_eq!(
        kinds(&*store, 0, "t").await,
        [OpsKind::DeliveryDeadLettered]
    );
    let events = store.ops_events(0, None, 100).await.unwrap();
    assert_eq!(events[0].data["delivery_id"], da);
    assert_eq!(events[0].data["job_id"], a.to_string());
    assert_eq!(events[0].data["destination"], URL);
    let first = events[0].id;

    // The second in a row: the threshold is reached and the endpoint paused;
    // what it was still owed is held. The other tenant's is not.
    outcome(&*store, db, AfterAttempt::Dead, 4, w).await;
    assert_eq!(
        kinds(&*store, first, "t").await,
        [
            OpsKind::DeliveryDeadLettered,
            OpsKind::DlqThresholdExceeded,
            OpsKind::EndpointDisabled
        ]
    );
    assert_eq!(store.dead_letters().await.unwrap()[0].count, 2);
    // c's delivery was claimed before the pause: its outcome is recorded as
    // it comes (a retry), and it is held from then on.
    outcome(&*store, dc, AfterAttempt::RetryAt(t(5)), 4, w).await;
    let d = owing(&*store, "t").await;
    assert_eq!(
        claim(&*store, 10).await,
        Vec::<i64>::new(),
        "c and d are held, not claimed"
    );
    outcome(&*store, du, AfterAttempt::Delivered, 4, w).await;
    let held = store.deliveries(d).await.unwrap();
    assert_eq!(held[0].0.state, DeliveryState::Held);
    let eps = store.endpoints(Some(tenant.clone())).await.unwrap();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(
        (eps[0].target.as_str(), eps[0].dead_in_a_row, eps[0].held),
        (URL, 2, 2)
    );
    assert!(eps[0].paused_at.is_some());
    assert!(
        store
            .endpoints(Some(Tenant("u".into())))
            .await
            .unwrap()
            .is_empty()
    );

    // Resumed: the held deliveries are due at once, in order; one getting
    // through tells the endpoint recovered and it is no longer watched.
    let released = store
        .resume_endpoint(&tenant, Channel::Webhook, URL, t(20))
        .await
        .unwrap();
    assert_eq!(released, 2);
    let dd = held[0].0.id;
    assert_eq!(claim(&*store, 20).await, [dc, dd]);
    outcome(&*store, dc, AfterAttempt::Delivered, 21, w).await;
    let tail = kinds(&*store, first, "t").await;
    assert_eq!(tail.last(), Some(&OpsKind::EndpointRecovered), "{tail:?}");
    assert!(store.endpoints(None).await.unwrap().is_empty());
    assert!(matches!(
        store
            .resume_endpoint(&tenant, Channel::Webhook, URL, t(22))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(kinds(&*store, 0, "u").await.is_empty(), "per tenant");
    let all = store.ops_events(0, None, 100).await.unwrap();
    assert_eq!(
        store.last_ops_event().await.unwrap(),
        all.last().unwrap().id
    );

    // Dead letters leave the count when replayed and when their job goes.
    store.replay_delivery(da, None, false, t(23)).await.unwrap();
    assert_eq!(store.dead_letters().await.unwrap()[0].count, 1);
    store.delete(b).await.unwrap();
    assert!(store.dead_letters().await.unwrap().is_empty());
}

pub async fn dead_letter_counts_survive_folding(store: Arc<dyn Store>) {
    let job = owing(&*store, "t").await;
    let d = store.deliveries(job).await.unwrap()[0].0.id;
    claim(&*store, 2).await;
    // Dead and replayed again and again: hundreds of +1 and -1 rows,
    // folded by reads, the count right before and after.
    for i in 0..150 {
        outcome(&*store, d, AfterAttempt::Dead, 3 + i, Watch::default()).await;
        if i % 50 == 0 {
            let dead = store.dead_letters().await.unwrap();
            assert_eq!(dead[0].count, 1, "round {i}");
        }
        store
            .replay_delivery(d, None, false, t(3 + i))
            .await
            .unwrap();
        assert!(store.dead_letters().await.unwrap().is_empty(), "round {i}");
        claim(&*store, 3 + i).await;
    }
    outcome(&*store, d, AfterAttempt::Dead, 500, Watch::default()).await;
    let dead = store.dead_letters().await.unwrap();
    assert_eq!(
        (dead.len(), dead[0].count, dead[0].oldest),
        (1, 1, Some(t(500)))
    );
}
