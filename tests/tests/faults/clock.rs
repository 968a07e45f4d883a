//! Fault tier (issue #9): a clock jump. Job backoff is computed from times stored in the job's
//! events (`retryAt`, lease expiries), so a worker whose clock jumped a year ahead writes a retry
//! time a year away. That must stay sane: the job is not run early nor spun on, it shows its
//! far-off next run to operators, an operator retry makes it due at once by the real clock, and
//! the attempts the app's own workers record keep backoffs within the configured cap.

use std::time::Duration;

use chrono::Utc;
use mpanel_adapters::bus::CommandBus;
use mpanel_adapters::metadata::EventMetadata;
use mpanel_domain::job::JobCommand;
use mpanel_tests::faults::{settle, Delivery};
use mpanel_tests::proxy::TcpProxy;
use mpanel_tests::reliability;
use mpanel_tests::servers::{delete_zone, powerdns_proxy};
use mpanel_tests::{unique_domain, TestApp};
use serde_json::Value;
use uuid::Uuid;

async fn job_events(app: &TestApp, job: Uuid, event_type: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload->$2 FROM events WHERE aggregate_type = 'Job' AND aggregate_id = $1 \
         AND event_type = $2 ORDER BY sequence",
    )
    .bind(job.to_string())
    .bind(event_type)
    .fetch_all(&app.pool)
    .await
    .expect("job events")
}

fn time(v: &Value, field: &str) -> chrono::DateTime<Utc> {
    v[field]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("{field} in {v}"))
        .with_timezone(&Utc)
}

/// An app whose PowerDNS is "down" behind a proxy (retrying fast, up to 50 attempts), with one
/// order placed: its DNS job keeps failing until the test brings the proxy up.
struct Setup {
    proxy: TcpProxy,
    app: TestApp,
    payment: String,
    domain: String,
    job: Uuid,
}

async fn order_with_powerdns_down(extra: &[(&str, &str)]) -> Setup {
    let (proxy, url) = powerdns_proxy();
    let mut vars = vec![
        ("POWERDNS_API_URL", url.as_str()),
        ("JOB_MAX_ATTEMPTS", "50"),
        ("JOB_BACKOFF_BASE_MS", "200"),
        ("JOB_BACKOFF_CAP_MS", "400"),
    ];
    vars.extend_from_slice(extra);
    let app = TestApp::spawn_with(&vars).await;
    let payment = format!("pi_clock_{}", Uuid::new_v4().simple());
    let domain = unique_domain();
    let r = app
        .post_order(&app.order_body(&payment, "owner@example.com", &domain))
        .await;
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await.expect("body");
    let job = Uuid::parse_str(body["jobIds"][0].as_str().expect("dns job")).expect("uuid");
    Setup {
        proxy,
        app,
        payment,
        domain,
        job,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_time_a_year_ahead_stays_sane_and_an_operator_retry_runs_it_now() {
    // PowerDNS "down" behind a proxy, so the DNS job keeps failing and retrying.
    let Setup {
        proxy,
        app,
        payment,
        domain,
        job,
    } = order_with_powerdns_down(&[]).await;
    app.eventually(60, "the DNS job failing while PowerDNS is down", || async {
        (!job_events(&app, job, "JobAttemptFailed").await.is_empty()).then_some(())
    })
    .await;

    // A worker whose clock jumped a year ahead takes the job (its "now" is past every lease)
    // and records a failure with a retry time computed from its own clock. Its lease ends a
    // year from now, which the app's workers rightly treat as expired: should one of them take
    // the job over in between (the failure is then refused as stale), the skewed worker tries
    // again.
    let bus = CommandBus::new(&app.pool);
    let skewed = EventMetadata::new("worker");
    app.eventually(60, "the skewed worker's failure recorded", || async {
        let ahead = Utc::now() + chrono::Duration::days(365);
        let lease_id = Uuid::new_v4();
        let start = JobCommand::Start {
            lease_id,
            worker: "skewed-clock".into(),
            lease_until: ahead + chrono::Duration::seconds(60),
            at: ahead,
        };
        bus.jobs.execute(job, start, &skewed).await.ok()?;
        let fail = JobCommand::FailAttempt {
            lease_id,
            error: "transient: PowerDNS unreachable".into(),
            retry_at: ahead + chrono::Duration::seconds(2),
            at: ahead,
        };
        bus.jobs.execute(job, fail, &skewed).await.ok().map(drop)
    })
    .await;

    // Operators see the job waiting, with its next run a year away.
    let (status, due_at): (String, chrono::DateTime<Utc>) = app
        .eventually(30, "the job's far-off retry in the read model", || async {
            sqlx::query_as::<_, (String, Option<chrono::DateTime<Utc>>)>(
                "SELECT status, due_at FROM jobs WHERE id = $1",
            )
            .bind(job)
            .fetch_optional(&app.pool)
            .await
            .ok()
            .flatten()
            .and_then(|(s, d)| Some((s, d?)))
            .filter(|(_, d)| *d > Utc::now() + chrono::Duration::days(300))
        })
        .await;
    assert_eq!(status, "RETRY_WAITING");
    assert!(due_at > Utc::now() + chrono::Duration::days(300));

    // PowerDNS is back, yet the job is neither run early nor spun on: over ten sweeps (200 ms
    // each) no worker starts it. Asserting an absence needs a window; this is it.
    proxy.up().await;
    let started = job_events(&app, job, "JobStarted").await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(job_events(&app, job, "JobStarted").await.len(), started);

    // The operator retries: due now by the real clock, it runs and the subscription activates.
    let out = app.cli(&["jobs", "retry", &job.to_string()]);
    assert!(out.contains("\"series\":1"), "{out}");
    let tally = settle(
        &app,
        &[Delivery {
            payment,
            domain: domain.clone(),
            status: Some(201),
            content_type: None,
            problem_type: None,
        }],
        120,
    )
    .await;

    // The success is stamped with the real clock, and every attempt the app's own workers
    // recorded backed off within the configured cap (400 ms, +20 % jitter), from its own time.
    let succeeded = job_events(&app, job, "JobSucceeded").await;
    assert_eq!(succeeded.len(), 1);
    let at = time(&succeeded[0], "succeededAt");
    assert!((Utc::now() - at).num_minutes().abs() < 10, "stamped {at}");
    let failures = job_events(&app, job, "JobAttemptFailed").await;
    let own: Vec<&Value> = failures
        .iter()
        .filter(|f| time(f, "failedAt") < Utc::now() + chrono::Duration::days(1))
        .collect();
    assert!(!own.is_empty());
    for f in own {
        if f["retryAt"].is_null() {
            continue;
        }
        let backoff = time(f, "retryAt") - time(f, "failedAt");
        assert!(
            backoff >= chrono::Duration::zero() && backoff <= chrono::Duration::milliseconds(480),
            "backoff {backoff} in {f}"
        );
    }
    delete_zone(&domain).await;
    reliability::fault(
        "Clock jump: a worker a year ahead stores a retry time a year away; the job waits \
         visibly without spinning, an operator retry runs it by the real clock",
        file!(),
        "a_retry_time_a_year_ahead_stays_sane_and_an_operator_retry_runs_it_now",
        tally,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_by_a_worker_a_year_ahead_is_taken_over_when_it_dies() {
    // PowerDNS "down" until the skewed worker holds the DNS job, so the app cannot finish it
    // first.
    let Setup {
        proxy,
        app,
        payment,
        domain,
        job,
    } = order_with_powerdns_down(&[("JOB_LEASE_SECS", "20")]).await;

    // A worker whose clock is a year ahead takes a lease (ending a year from now) and dies
    // without an outcome. The app's own workers hold short leases, so retry until it gets in.
    let bus = CommandBus::new(&app.pool);
    let skewed = EventMetadata::new("worker");
    app.eventually(60, "the skewed worker holding the job", || async {
        let ahead = Utc::now() + chrono::Duration::days(365);
        let start = JobCommand::Start {
            lease_id: Uuid::new_v4(),
            worker: "skewed-clock".into(),
            lease_until: ahead + chrono::Duration::seconds(20),
            at: ahead,
        };
        bus.jobs.execute(job, start, &skewed).await.ok().map(drop)
    })
    .await;
    let before = job_events(&app, job, "JobStarted").await.len();

    // PowerDNS is back. The stranded lease counts as expired: the sweeper rings the job, a live
    // worker takes it over and the order activates, long before the year is up.
    proxy.up().await;
    let tally = settle(
        &app,
        &[Delivery {
            payment,
            domain: domain.clone(),
            status: Some(201),
            content_type: None,
            problem_type: None,
        }],
        120,
    )
    .await;
    let started = job_events(&app, job, "JobStarted").await;
    assert!(started.len() > before, "a live worker took the job over");
    let last = started.last().expect("a start");
    assert_ne!(last["worker"], "skewed-clock");
    assert!((Utc::now() - time(last, "startedAt")).num_minutes().abs() < 10);
    delete_zone(&domain).await;
    reliability::fault(
        "Clock jump: a worker a year ahead takes a job's lease and dies; the lease counts as \
         expired, a live worker takes the job over and the order activates",
        file!(),
        "a_lease_taken_by_a_worker_a_year_ahead_is_taken_over_when_it_dies",
        tally,
    );
}
