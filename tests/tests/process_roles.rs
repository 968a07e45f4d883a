//! The process model, black-box: readiness follows feed lag, every role stops cleanly on
//! SIGTERM within `SHUTDOWN_TIMEOUT_SECS`, a stopping worker records the outcome of the job in
//! its hands, and the bench-only provisioners are refused without their allow flag.

use std::process::Command;
use std::time::{Duration, Instant};

use mpanel_tests::cluster::{parse_metrics, Cluster};
use mpanel_tests::mpanel_bin;
use serde_json::Value;

const SHUTDOWN_SECS: u64 = 10;

#[tokio::test]
async fn ready_is_503_while_the_feed_lags_and_200_once_runners_catch_up() {
    // The seed wrote a few events; no runner has processed them yet.
    let cluster = Cluster::create(&[("READY_MAX_FEED_LAG_EVENTS", "1")]).await;
    let mut api = cluster.spawn("api", "api-1", &[]);
    cluster
        .eventually(30, "api live", || async {
            let r = cluster
                .http
                .get(format!("{}/api/live", api.url))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;

    let r = cluster
        .http
        .get(format!("{}/api/ready", api.url))
        .send()
        .await
        .expect("ready");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ascii"),
        "application/problem+json"
    );
    let problem: Value = r.json().await.expect("problem");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains("feed lag over 1 events"), "{detail}");
    assert!(
        detail.contains("saga ("),
        "names the lagging subscribers: {detail}"
    );

    let r = cluster
        .http
        .get(format!("{}/api/health", api.url))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status().as_u16(), 503);
    let health: Value = r.json().await.expect("health body");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["checks"]["postgres"]["status"], "ok");
    assert_eq!(health["checks"]["feed"]["status"], "down");
    assert!(health["checks"]["feed"]["maxLagEvents"].as_i64() > Some(1));
    let subscribers = health["checks"]["feed"]["subscribers"]
        .as_array()
        .expect("subscribers");
    assert!(subscribers.iter().any(|s| s["name"] == "saga"
        && s["lagEvents"].as_i64() > Some(1)
        && s["lagSeconds"].is_number()));

    // The gauge says the same.
    let lag = cluster
        .eventually(10, "a feed lag gauge", || async {
            let samples = parse_metrics(&api.metrics(&cluster.http).await);
            samples
                .into_iter()
                .find(|(n, l, v)| {
                    n == "mpanel_feed_lag_events" && l.contains("subscriber=\"saga\"") && *v > 1.0
                })
                .map(|(_, _, v)| v)
        })
        .await;
    assert!(lag > 1.0);

    // Runners catch up: ready again, and healthy with per-subscriber lag 0.
    let mut runners = cluster.spawn("runners", "runners-1", &[]);
    runners.wait_up(&cluster.http).await;
    api.wait_up(&cluster.http).await;
    let health: Value = cluster
        .eventually(20, "healthy", || async {
            let body: Value = cluster
                .http
                .get(format!("{}/api/health", api.url))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (body["status"] == "ok").then_some(body)
        })
        .await;
    assert_eq!(health["checks"]["feed"]["maxLagEvents"], 0);
    assert_eq!(health["checks"]["redis"]["status"], "ok");
}

#[tokio::test]
async fn every_role_exits_zero_on_sigterm_within_the_bound() {
    let shutdown = SHUTDOWN_SECS.to_string();
    let cluster = Cluster::create(&[
        ("SHUTDOWN_TIMEOUT_SECS", shutdown.as_str()),
        ("MPANEL_PROVISIONERS", "instant"),
        ("MPANEL_ALLOW_FAKE_PROVISIONERS", "1"),
    ])
    .await;
    // `serve` with the real provisioners, from the stack's environment.
    let mut processes = vec![cluster.spawn("serve", "serve-1", &[("MPANEL_PROVISIONERS", "real")])];
    processes.push(cluster.spawn("api", "api-1", &[]));
    processes.push(cluster.spawn("worker", "worker-1", &[]));
    processes.push(cluster.spawn("runners", "runners-1", &[]));
    for p in &mut processes {
        p.wait_up(&cluster.http).await;
    }
    for p in &mut processes {
        p.terminate();
        let sent = Instant::now();
        let status = p
            .wait_exit(Duration::from_secs(SHUTDOWN_SECS + 5))
            .unwrap_or_else(|| panic!("{} still running after SIGTERM; log: {}", p.name, p.log()));
        assert!(
            status.success(),
            "{} exited with {status}; log: {}",
            p.name,
            p.log()
        );
        assert!(sent.elapsed() < Duration::from_secs(SHUTDOWN_SECS + 1));
        let log = p.log();
        assert!(
            log.contains("shutdown signal received"),
            "{}: {log}",
            p.name
        );
        assert!(log.contains("shutdown complete"), "{}: {log}", p.name);
    }
}

#[tokio::test]
async fn a_stopping_worker_records_the_outcome_of_the_job_in_its_hands() {
    let shutdown = SHUTDOWN_SECS.to_string();
    let cluster = Cluster::create(&[
        ("SHUTDOWN_TIMEOUT_SECS", shutdown.as_str()),
        ("MPANEL_PROVISIONERS", "instant"),
        ("MPANEL_ALLOW_FAKE_PROVISIONERS", "1"),
        // Long enough that SIGTERM lands mid-attempt.
        ("MPANEL_INSTANT_DELAY_MS", "2000"),
        ("WORKER_CONCURRENCY", "3"),
    ])
    .await;
    let mut api = cluster.spawn("api", "api-1", &[]);
    let mut runners = cluster.spawn("runners", "runners-1", &[]);
    let mut worker = cluster.spawn("worker", "worker-1", &[]);
    for p in [&mut api, &mut runners, &mut worker] {
        p.wait_up(&cluster.http).await;
    }
    let status = cluster
        .post_order(
            &api,
            &cluster.order_body("pi_sigterm_1", "sigterm.example.net"),
        )
        .await;
    assert_eq!(status, 201);
    cluster
        .eventually(20, "an attempt in progress", || async {
            let started: i64 =
                sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'JobStarted'")
                    .fetch_one(&cluster.pool)
                    .await
                    .expect("count");
            (started > 0).then_some(())
        })
        .await;
    worker.terminate();
    let exit = worker
        .wait_exit(Duration::from_secs(SHUTDOWN_SECS + 5))
        .expect("worker exits");
    assert!(exit.success(), "{exit}; log: {}", worker.log());
    // Every attempt it started has its outcome recorded: nothing waits for a lease to expire.
    let (started, finished): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_type = 'JobStarted'), \
                count(*) FILTER (WHERE event_type IN ('JobSucceeded', 'JobAttemptFailed')) \
         FROM events WHERE aggregate_type = 'Job'",
    )
    .fetch_one(&cluster.pool)
    .await
    .expect("job events");
    assert!(started > 0);
    assert_eq!(started, finished, "log: {}", worker.log());
    assert!(worker.log().contains("finishing jobs in hand"));
}

#[test]
fn the_instant_provisioners_are_refused_without_the_allow_flag() {
    for role in ["serve", "api", "worker", "runners"] {
        let out = Command::new(mpanel_bin())
            .arg(role)
            .env("MPANEL_PROVISIONERS", "instant")
            .env_remove("MPANEL_ALLOW_FAKE_PROVISIONERS")
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("REDIS_URL", "redis://127.0.0.1:1")
            .env("MARKETING_WEBHOOK_SECRET", "0123456789abcdef0123")
            .env("JWT_SECRET", "0123456789abcdef0123456789abcdef")
            .output()
            .expect("run mpanel");
        assert!(
            !out.status.success(),
            "{role} accepted instant provisioners"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("MPANEL_PROVISIONERS")
                && stderr.contains("MPANEL_ALLOW_FAKE_PROVISIONERS"),
            "{role}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_shutdown_that_overruns_its_bound_still_exits_zero_with_a_log_line() {
    let cluster = Cluster::create(&[
        ("SHUTDOWN_TIMEOUT_SECS", "2"),
        ("MPANEL_PROVISIONERS", "instant"),
        ("MPANEL_ALLOW_FAKE_PROVISIONERS", "1"),
        // Far longer than the bound: the attempt cannot finish in time.
        ("MPANEL_INSTANT_DELAY_MS", "60000"),
    ])
    .await;
    let mut api = cluster.spawn("api", "api-1", &[]);
    let mut runners = cluster.spawn("runners", "runners-1", &[]);
    let mut worker = cluster.spawn("worker", "worker-1", &[]);
    for p in [&mut api, &mut runners, &mut worker] {
        p.wait_up(&cluster.http).await;
    }
    let status = cluster
        .post_order(
            &api,
            &cluster.order_body("pi_overrun_1", "overrun.example.net"),
        )
        .await;
    assert_eq!(status, 201);
    cluster
        .eventually(20, "an attempt in progress", || async {
            let started: i64 =
                sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'JobStarted'")
                    .fetch_one(&cluster.pool)
                    .await
                    .expect("count");
            (started > 0).then_some(())
        })
        .await;
    let sent = Instant::now();
    worker.terminate();
    let exit = worker
        .wait_exit(Duration::from_secs(12))
        .unwrap_or_else(|| panic!("worker still running; log: {}", worker.log()));
    assert!(exit.success(), "{exit}; log: {}", worker.log());
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    assert!(
        worker
            .log()
            .contains("graceful shutdown did not finish in time"),
        "{}",
        worker.log()
    );
}
