//! Fault tier (issue #9): Postgres restarts under webhook load. The app's database lives on a
//! private Postgres cluster of this test's own, so stopping it disturbs no other test. While it
//! is down the API answers 503 problem+json (readiness, the webhook, staff reads) and the
//! process stays up; once it is back the same process recovers by itself — no restart of
//! mpanel — and every order taken, or re-sent by the client after its 503, is ACTIVE exactly
//! once.

use std::time::Duration;

use mpanel_tests::faults::{problem_of, settle, Delivery, Load, INSTANT_PROVISIONERS};
use mpanel_tests::private::PrivatePostgres;
use mpanel_tests::reliability::{self, Tally};
use mpanel_tests::TestApp;

const PROBLEM_JSON: &str = "application/problem+json";
const UNAVAILABLE: &str = "urn:mpanel:problem:unavailable";

async fn restart_under_load(mode: &str) -> Tally {
    let pg = PrivatePostgres::start();
    let app = TestApp::spawn_on(&pg.admin_url(), INSTANT_PROVISIONERS).await;
    let token = app.admin_token().await;
    let load = Load::start(&app, 2, Duration::from_millis(200));
    app.eventually(60, "orders taken before the fault", || async {
        (load.sent() >= 6).then_some(())
    })
    .await;

    tokio::task::block_in_place(|| pg.stop(mode));

    // Down: every kind of request is a 503 problem+json, and the process is still alive.
    let get = |path: &str| app.http.get(format!("{}{path}", app.url)).send();
    let ready = problem_of(get("/api/ready").await.expect("ready")).await;
    assert_eq!(
        ready,
        (503, Some(PROBLEM_JSON.into()), Some(UNAVAILABLE.into())),
        "/api/ready while Postgres is down"
    );
    let payment = format!("pi_outage_{mode}");
    let order = app
        .post_order(&app.order_body(&payment, "owner@example.com", "outage.example.net"))
        .await;
    let order = problem_of(order).await;
    assert_eq!(
        order,
        (503, Some(PROBLEM_JSON.into()), Some(UNAVAILABLE.into())),
        "the webhook while Postgres is down"
    );
    let staff = app
        .http
        .get(format!("{}/api/orders", app.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("staff read");
    let staff = problem_of(staff).await;
    assert_eq!(
        staff,
        (503, Some(PROBLEM_JSON.into()), Some(UNAVAILABLE.into())),
        "a staff read while Postgres is down"
    );
    let live = get("/api/live").await.expect("live");
    assert_eq!(live.status().as_u16(), 200, "the process stays up");

    tokio::task::block_in_place(|| pg.start_again());

    // Back: the same process is ready again and takes orders, nobody restarted it.
    app.eventually(90, "/api/ready 200 again", || async {
        let r = app
            .http
            .get(format!("{}/api/ready", app.url))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let before = load.sent();
    app.eventually(60, "new orders taken after the restart", || async {
        (load.sent() >= before + 6).then_some(())
    })
    .await;
    let mut deliveries = load.stop().await;
    assert!(
        deliveries.iter().any(|d| d.accepted()),
        "the load had orders taken"
    );
    deliveries.push(Delivery {
        payment,
        domain: "outage.example.net".into(),
        status: Some(503),
        content_type: None,
        problem_type: None,
    });
    settle(&app, &deliveries, 180).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_postgres_restart_under_load_is_503_meanwhile_and_loses_no_order() {
    let tally = restart_under_load("fast").await;
    reliability::fault(
        "Postgres restarted (fast shutdown) under webhook load: 503 problem+json meanwhile, \
         recovery without restarting mpanel",
        file!(),
        "a_fast_postgres_restart_under_load_is_503_meanwhile_and_loses_no_order",
        tally,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_postgres_restart_under_load_is_503_meanwhile_and_loses_no_order() {
    let tally = restart_under_load("immediate").await;
    reliability::fault(
        "Postgres restarted (immediate shutdown, crash recovery) under webhook load: 503 \
         problem+json meanwhile, recovery without restarting mpanel",
        file!(),
        "an_immediate_postgres_restart_under_load_is_503_meanwhile_and_loses_no_order",
        tally,
    );
}
