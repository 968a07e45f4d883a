//! Fault tier (issue #9): Redis, the job doorbell, flushed and then stopped for 30 s while
//! orders keep coming. The app uses a private `redis-server` of this test's own, so FLUSHALL and
//! the outage disturb no other test. Postgres is the truth: the webhook keeps taking orders,
//! readiness says Redis is down, and once Redis is back the sweeper re-rings every due job — the
//! same process, not restarted — and every order ends ACTIVE exactly once.

use std::time::{Duration, Instant};

use mpanel_tests::faults::{problem_of, settle, Load, INSTANT_PROVISIONERS};
use mpanel_tests::private::PrivateRedis;
use mpanel_tests::reliability;
use mpanel_tests::TestApp;

/// How long Redis stays down: the scenario of the issue.
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_then_down_for_30_s_loses_no_order_and_needs_no_restart() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let mut env = INSTANT_PROVISIONERS.to_vec();
    env.push(("REDIS_URL", url.as_str()));
    let app = TestApp::spawn_with(&env).await;
    let load = Load::start(&app, 2, Duration::from_secs(1));
    app.eventually(60, "orders taken before the flush", || async {
        (load.sent() >= 4).then_some(())
    })
    .await;

    // FLUSHALL with orders in flight: the stream and its consumer group are gone.
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    let before = load.sent();
    app.eventually(60, "orders taken after the flush", || async {
        (load.sent() >= before + 4).then_some(())
    })
    .await;

    // Down for 30 s with orders still coming.
    redis.stop();
    let down_since = Instant::now();
    let ready = app
        .http
        .get(format!("{}/api/ready", app.url))
        .send()
        .await
        .expect("ready");
    let (status, content_type, kind) = problem_of(ready).await;
    assert_eq!(status, 503, "/api/ready while Redis is down");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(kind.as_deref(), Some("urn:mpanel:problem:unavailable"));
    // Orders are still taken (201), and their provisioning waits for the doorbell.
    let payment = format!("pi_redis_down_{}", uuid::Uuid::new_v4().simple());
    let taken = app
        .post_order(&app.order_body(&payment, "owner@example.com", "redis-down.example.net"))
        .await;
    assert_eq!(taken.status().as_u16(), 201, "the webhook needs no Redis");
    let taken: serde_json::Value = taken.json().await.expect("order body");
    let waiting: String =
        sqlx::query_scalar("SELECT status FROM subscriptions WHERE id = $1::uuid")
            .bind(taken["subscriptionId"].as_str().expect("subscriptionId"))
            .fetch_optional(&app.pool)
            .await
            .expect("subscription")
            .unwrap_or_else(|| "not projected yet".into());
    assert_ne!(
        waiting, "ACTIVE",
        "no worker can be rung while Redis is down"
    );
    // The outage lasts its full length: this is the fault being injected, not a wait for a
    // condition.
    tokio::time::sleep(OUTAGE.saturating_sub(down_since.elapsed())).await;
    let during = load.sent();

    tokio::task::block_in_place(|| redis.start_again());
    app.eventually(60, "/api/ready 200 once Redis is back", || async {
        let r = app
            .http
            .get(format!("{}/api/ready", app.url))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    app.eventually(60, "orders taken after Redis came back", || async {
        (load.sent() >= during + 4).then_some(())
    })
    .await;
    let mut deliveries = load.stop().await;
    assert!(
        deliveries.iter().all(|d| d.accepted()),
        "every order was taken while Redis was flushed or down: {:?}",
        deliveries.iter().find(|d| !d.accepted())
    );
    deliveries.push(mpanel_tests::faults::Delivery {
        payment,
        domain: "redis-down.example.net".into(),
        status: Some(201),
        content_type: None,
        problem_type: None,
    });
    let tally = settle(&app, &deliveries, 180).await;
    reliability::fault(
        "Redis FLUSHALL with orders in flight, then Redis stopped for 30 s and started: \
         webhook keeps taking orders, sweeper re-rings, no mpanel restart",
        file!(),
        "redis_flushed_then_down_for_30_s_loses_no_order_and_needs_no_restart",
        tally,
    );
}
