//! Scale-out black-box: 3 `mpanel api` + 2 `mpanel worker` + 2 `mpanel runners` processes on one
//! database and one Redis prefix take 500 orders (10 % duplicates) spread over the APIs, while
//! the leading runners process is killed with SIGKILL half-way.
//!
//! The steps run on the bench-only instant provisioners (`MPANEL_PROVISIONERS=instant`), so the
//! run exercises mpanel's own machinery — webhook, command bus, feed, saga, Redis doorbell,
//! leases, failover — without creating 1500 zones, accounts and mailboxes on the shared servers.
//! The instant provisioners log every call in `bench_provisioner_runs`, which is how the test
//! sees that no job's step ever ran twice at the same time in any worker.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mpanel_tests::cluster::{parse_metrics, Cluster, Process};
use mpanel_tests::reliability::{self, Tally};

const ORDERS: usize = 500;
const DUPLICATES: usize = ORDERS / 10;
/// Orders whose instant provisioners always fail: they dead-letter (and feed that metric).
const FAILING: usize = 3;
const IN_FLIGHT: usize = 16;

fn subscriber_count() -> i64 {
    i64::try_from(mpanel_projections::projectors::all().len() + 1).expect("small")
}

/// Advisory (leadership) locks held per process name.
async fn leaders(cluster: &Cluster) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() \
           AND a.application_name LIKE 'runners-%' GROUP BY 1",
    )
    .fetch_all(&cluster.pool)
    .await
    .expect("pg_locks")
    .into_iter()
    .collect()
}

async fn head(cluster: &Cluster) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT global_position FROM events ORDER BY tx_id DESC, global_position DESC LIMIT 1), 0)",
    )
    .fetch_one(&cluster.pool)
    .await
    .expect("head")
}

/// A deterministic shuffle (no rand dependency): Fisher–Yates driven by an LCG.
fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = usize::try_from(state >> 33).expect("fits") % (i + 1);
        items.swap(i, j);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn orders_over_many_processes_activate_exactly_once_and_runners_fail_over() {
    let started = Instant::now();
    let cluster = Cluster::create(&[
        ("MPANEL_PROVISIONERS", "instant"),
        ("MPANEL_ALLOW_FAKE_PROVISIONERS", "1"),
        ("MPANEL_INSTANT_DELAY_MS", "5"),
        ("JOB_MAX_ATTEMPTS", "2"),
        ("WORKER_CONCURRENCY", "8"),
    ])
    .await;
    sqlx::query(
        "CREATE TABLE bench_provisioner_runs (job_id uuid NOT NULL, step text NOT NULL, \
         pid bigint NOT NULL, started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL)",
    )
    .execute(&cluster.pool)
    .await
    .expect("run log table");

    // Runners first, one after the other, so the first one leads every subscriber.
    let mut runners = vec![cluster.spawn("runners", "runners-1", &[])];
    runners[0].wait_up(&cluster.http).await;
    let n = subscriber_count();
    cluster
        .eventually(20, "runners-1 leads every subscriber", || async {
            (leaders(&cluster).await.get("runners-1") == Some(&n)).then_some(())
        })
        .await;
    runners.push(cluster.spawn("runners", "runners-2", &[]));
    let mut workers: Vec<Process> = (1..=2)
        .map(|i| cluster.spawn("worker", &format!("worker-{i}"), &[]))
        .collect();
    let mut apis: Vec<Process> = (1..=3)
        .map(|i| cluster.spawn("api", &format!("api-{i}"), &[]))
        .collect();
    for p in runners.iter_mut().chain(&mut workers).chain(&mut apis) {
        p.wait_up(&cluster.http).await;
    }
    let booted = started.elapsed();

    // 500 distinct payments, 50 of them delivered twice, 3 that will dead-letter; shuffled so
    // a duplicate may race its original on another API.
    let mut requests: Vec<(String, String)> = (0..ORDERS)
        .map(|i| {
            (
                format!("pi_scale_{i:04}"),
                format!("s{i:04}.scale.example.net"),
            )
        })
        .collect();
    requests.extend((0..DUPLICATES).map(|i| {
        (
            format!("pi_scale_{:04}", i * 10),
            format!("s{:04}.scale.example.net", i * 10),
        )
    }));
    requests.extend((0..FAILING).map(|i| {
        (
            format!("pi_fail_{i}"),
            format!("fail-{i}.scale.example.net"),
        )
    }));
    shuffle(&mut requests);
    let total = requests.len();

    let apis_ref = &apis;
    let cluster_ref = &cluster;
    let mut responses = futures::stream::iter(requests.into_iter().enumerate().map(
        |(k, (payment, domain))| async move {
            let api = &apis_ref[k % apis_ref.len()];
            let status = cluster_ref
                .post_order(api, &cluster_ref.order_body(&payment, &domain))
                .await;
            (payment, status)
        },
    ))
    .buffer_unordered(IN_FLIGHT);
    let mut statuses: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    let mut answered = 0;
    let mut killed: Option<(String, i64, Instant)> = None;
    while let Some((payment, status)) = responses.next().await {
        statuses.entry(payment).or_default().push(status);
        answered += 1;
        if answered == total / 2 {
            // Kill -9 whichever runners process leads the most subscribers.
            let lead = leaders(&cluster).await;
            let victim = runners
                .iter()
                .position(|r| lead.get(&r.name).copied().unwrap_or(0) > 0)
                .expect("some runners process leads");
            let at = head(&cluster).await;
            runners[victim].kill9();
            killed = Some((runners[victim].name.clone(), at, Instant::now()));
            runners.swap_remove(victim);
        }
    }
    drop(responses);
    let sent = started.elapsed();
    let (victim, head_at_kill, killed_at) = killed.expect("the runner was killed");
    let survivor = runners.pop().expect("one runners process left");
    assert_ne!(survivor.name, victim);

    // Webhook semantics under duplicates across processes: one 201 per payment, the rest 200.
    assert_eq!(statuses.len(), ORDERS + FAILING);
    for (payment, codes) in &statuses {
        assert_eq!(
            codes.iter().filter(|c| **c == 201).count(),
            1,
            "{payment}: {codes:?}"
        );
        assert!(
            codes.iter().all(|c| *c == 201 || *c == 200),
            "{payment}: {codes:?}"
        );
    }

    // The survivor takes over every subscriber the victim led.
    let failover = cluster
        .eventually(
            15,
            "the surviving runners process leads every subscriber",
            || async {
                let lead = leaders(&cluster).await;
                (lead.get(&survivor.name) == Some(&n) && !lead.contains_key(&victim))
                    .then(|| killed_at.elapsed())
            },
        )
        .await;

    // Everything completes: 500 ACTIVE, the failing ones PROVISIONING_FAILED.
    cluster
        .eventually(150, "every subscription settled", || async {
            let (active, failed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'ACTIVE'), \
                        count(*) FILTER (WHERE status = 'PROVISIONING_FAILED') FROM subscriptions",
            )
            .fetch_one(&cluster.pool)
            .await
            .expect("subscriptions");
            (active == ORDERS as i64 && failed == FAILING as i64).then_some(())
        })
        .await;
    // And every checkpoint moved past the kill and reached the head: the survivor advanced them.
    cluster
        .eventually(30, "every subscriber at the head", || async {
            let h = head(&cluster).await;
            let behind: i64 =
                sqlx::query_scalar("SELECT count(*) FROM checkpoints WHERE position <> $1")
                    .bind(h)
                    .fetch_one(&cluster.pool)
                    .await
                    .expect("checkpoints");
            (behind == 0).then_some(h)
        })
        .await;
    let final_head = head(&cluster).await;
    assert!(
        final_head > head_at_kill,
        "events kept coming after the kill"
    );
    let settled = started.elapsed();

    // Exactly one OrderPlaced per payment intent, one SubscriptionActivated per subscription.
    let (placed, orders): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id) FROM events WHERE event_type = 'OrderPlaced'",
    )
    .fetch_one(&cluster.pool)
    .await
    .expect("OrderPlaced");
    assert_eq!(
        (placed, orders),
        ((ORDERS + FAILING) as i64, (ORDERS + FAILING) as i64)
    );
    let (activated, subscriptions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id) FROM events WHERE event_type = 'SubscriptionActivated'",
    )
    .fetch_one(&cluster.pool)
    .await
    .expect("SubscriptionActivated");
    assert_eq!((activated, subscriptions), (ORDERS as i64, ORDERS as i64));
    let fulfilled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OrderFulfilled'")
            .fetch_one(&cluster.pool)
            .await
            .expect("OrderFulfilled");
    assert_eq!(fulfilled, ORDERS as i64);

    // No step ran twice at the same time: no two provisioner calls of one job overlap, in any
    // worker process.
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bench_provisioner_runs a JOIN bench_provisioner_runs b \
           ON a.job_id = b.job_id AND a.ctid < b.ctid \
          AND tstzrange(a.started_at, a.finished_at, '[]') && tstzrange(b.started_at, b.finished_at, '[]')",
    )
    .fetch_one(&cluster.pool)
    .await
    .expect("overlaps");
    assert_eq!(overlapping, 0, "a job's step ran twice concurrently");
    // And each successful job's provisioner succeeded exactly once in the log, every attempt
    // closed before the next one started (JobStarted and its outcome alternate).
    let job_events: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, event_type FROM events WHERE aggregate_type = 'Job' ORDER BY aggregate_id, sequence",
    )
    .fetch_all(&cluster.pool)
    .await
    .expect("job events");
    let mut open: HashMap<&str, bool> = HashMap::new();
    let mut succeeded: HashMap<&str, usize> = HashMap::new();
    for (job, event) in &job_events {
        let running = open.entry(job.as_str()).or_insert(false);
        match event.as_str() {
            "JobStarted" => {
                assert!(!*running, "job {job} started while an attempt was open");
                *running = true;
            }
            "JobSucceeded" | "JobAttemptFailed" => {
                assert!(*running, "job {job}: {event} without an open attempt");
                *running = false;
                if event == "JobSucceeded" {
                    *succeeded.entry(job.as_str()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    assert_eq!(succeeded.len(), ORDERS * 3);
    assert!(succeeded.values().all(|n| *n == 1));
    let workers_used: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT pid) FROM bench_provisioner_runs")
            .fetch_one(&cluster.pool)
            .await
            .expect("workers");
    assert_eq!(workers_used, 2, "both workers took jobs");

    // Metrics: every family appears across the processes, and what counts work is non-zero.
    tokio::time::sleep(Duration::from_millis(1200)).await; // one gauge refresh after settling
    let mut samples = Vec::new();
    for p in apis
        .iter()
        .chain(&workers)
        .chain(std::iter::once(&survivor))
    {
        samples.extend(parse_metrics(&p.metrics(&cluster.http).await));
    }
    let sum = |name: &str| -> Option<f64> {
        let values: Vec<f64> = samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    };
    for family in [
        "mpanel_http_requests_total",
        "mpanel_http_request_duration_seconds_count",
        "mpanel_events_appended_total",
        "mpanel_jobs",
        "mpanel_job_attempt_duration_seconds_count",
        "mpanel_jobs_dead_lettered_total",
        "mpanel_queue_depth",
        "mpanel_order_activation_seconds_count",
        "mpanel_db_pool_connections",
    ] {
        let total = sum(family).unwrap_or_else(|| panic!("{family} missing"));
        assert!(total > 0.0, "{family} is zero");
    }
    // Gauges that are legitimately 0 once everything settled: present, finite, not negative.
    for family in [
        "mpanel_feed_lag_events",
        "mpanel_feed_lag_seconds",
        "mpanel_oldest_due_job_age_seconds",
    ] {
        let total = sum(family).unwrap_or_else(|| panic!("{family} missing"));
        assert!(total.is_finite() && total >= 0.0, "{family} = {total}");
    }
    // Route labels are templates, never raw URIs.
    assert!(samples
        .iter()
        .any(|(n, l, _)| n == "mpanel_http_requests_total"
            && l.contains("route=\"/api/orders\"")
            && l.contains("status=\"201\"")));
    assert!(!samples.iter().any(|(_, l, _)| l.contains("pi_scale_")));
    let appended = sum("mpanel_events_appended_total").unwrap_or(0.0);
    assert!(
        appended >= placed as f64,
        "every OrderPlaced was counted by some API"
    );

    eprintln!(
        "scale_out: boot {booted:?}, {total} requests sent by {sent:?}, failover {failover:?}, \
         settled at {settled:?}, {final_head} events"
    );
    for p in apis
        .iter()
        .chain(&workers)
        .chain(std::iter::once(&survivor))
    {
        let log = p.log();
        assert!(
            !log.contains(&cluster.webhook_secret),
            "{} logged the secret",
            p.name
        );
    }
    reliability::fault(
        "kill -9 of the leading feed-runners process half-way through 500 orders (10 % \
         duplicates) over 3 APIs and 2 workers: the standby takes over, every job succeeds once",
        file!(),
        "orders_over_many_processes_activate_exactly_once_and_runners_fail_over",
        Tally {
            accepted: u64::try_from(ORDERS).expect("count"),
            ..Tally::default()
        },
    );
}
