//! `mpanel events verify|export|replay` and `mpanel projections status` black-box: a real log
//! verifies, a tampered one names the first broken position, an export verifies offline and
//! replays into a fresh database with identical read models.

use std::process::{Command, Stdio};
use std::time::Duration;

use mpanel_projections::audit::read_model_checksums;
use mpanel_tests::{admin_database_url, mpanel_bin, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

fn run(database_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(mpanel_bin())
        .args(args)
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .output()
        .expect("run mpanel")
}

async fn sealed_everything(app: &TestApp) {
    app.eventually(20, "the sealer caught up with the log", || async {
        let (events, seals): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_seals)",
        )
        .fetch_one(&app.pool)
        .await
        .expect("counts");
        (events > 0 && events == seals).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_log_verifies_exports_and_replays_into_identical_read_models() {
    let mut app = TestApp::spawn_with(&[
        ("POWERDNS_API_URL", "http://127.0.0.1:1"),
        ("JOB_MAX_ATTEMPTS", "1"),
    ])
    .await;
    for i in 0..3 {
        let body = app.order_body(
            &format!("pi_{}", Uuid::new_v4().simple()),
            &format!("c{i}@example.com"),
            &format!(
                "audit{i}-{}.example",
                &Uuid::new_v4().simple().to_string()[..6]
            ),
        );
        assert_eq!(app.post_order(&body).await.status(), StatusCode::CREATED);
    }
    // Let provisioning settle (DNS fails at once: PROVISIONING_FAILED), then the sealer.
    app.eventually(60, "every subscription settled", || async {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE status NOT IN ('ACTIVE', 'PROVISIONING_FAILED')")
            .fetch_one(&app.pool)
            .await
            .expect("count");
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions").fetch_one(&app.pool).await.expect("count");
        (total == 3 && open == 0).then_some(())
    })
    .await;
    // The failed DNS step does not stop the hosting and mail jobs already scheduled; wait for
    // every job to finish, every subscriber to catch up and the sealer to seal the last event,
    // then stop the server so the log under test no longer moves.
    // All nine jobs (three orders, three steps each) must be in the read model: the jobs
    // projector runs independently of the subscriptions one and may not have applied the
    // `JobScheduled`s yet, and an empty table has no open job either.
    app.eventually(60, "every job finished", || async {
        let (jobs, open): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status NOT IN ('SUCCEEDED', 'DEAD_LETTERED')) \
             FROM jobs",
        )
        .fetch_one(&app.pool)
        .await
        .expect("count");
        (jobs == 9 && open == 0).then_some(())
    })
    .await;
    app.eventually(30, "every subscriber caught up", || async {
        let status = run(&app.database_url, &["projections", "status"]);
        let status: Value = serde_json::from_slice(&status.stdout).ok()?;
        status
            .as_array()?
            .iter()
            .all(|s| s["lagEvents"] == 0)
            .then_some(())
    })
    .await;
    sealed_everything(&app).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.kill();
    sealed_everything(&app).await;

    let verified = run(&app.database_url, &["events", "verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let report: Value = serde_json::from_slice(&verified.stdout).expect("report JSON");
    assert_eq!(report["status"], "ok");

    let export = run(&app.database_url, &["events", "export"]);
    assert!(export.status.success());
    let dir = std::env::temp_dir().join("mpanel-tests");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join(format!("export-{}.ndjson", Uuid::new_v4().simple()));
    std::fs::write(&file, &export.stdout).expect("write export");
    let lines = export.stdout.iter().filter(|b| **b == b'\n').count();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(i64::try_from(lines).expect("lines"), events);

    // Offline: no DATABASE_URL at all.
    let offline = Command::new(mpanel_bin())
        .args(["events", "verify", "--file"])
        .arg(&file)
        .env_remove("DATABASE_URL")
        .output()
        .expect("verify file");
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stdout)
    );
    let offline_report: Value = serde_json::from_slice(&offline.stdout).expect("JSON");
    assert_eq!(offline_report["headHash"], report["headHash"]);

    // A tampered export fails at the tampered line's position.
    let text = String::from_utf8(export.stdout.clone()).expect("utf8");
    let mut tampered_lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let victim = tampered_lines.len() / 2;
    let mut line: Value = serde_json::from_str(&tampered_lines[victim]).expect("line");
    let position = line["position"].as_i64().expect("position");
    line["metadata"]["actor"] = Value::String("mallory".into());
    tampered_lines[victim] = line.to_string();
    let tampered = dir.join(format!("tampered-{}.ndjson", Uuid::new_v4().simple()));
    std::fs::write(&tampered, tampered_lines.join("\n") + "\n").expect("write");
    let refused = run(
        "",
        &[
            "events",
            "verify",
            "--file",
            tampered.to_str().expect("path"),
        ],
    );
    assert!(!refused.status.success());
    let broken: Value = serde_json::from_slice(&refused.stdout).expect("JSON");
    assert_eq!(broken["status"], "broken");
    assert_eq!(broken["position"], position);

    // Replay into a fresh database: the same read models, to the byte.
    let fresh = format!("mpanel_bb_replay_{}", Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_database_url())
        .await
        .expect("admin");
    sqlx::query(&format!("CREATE DATABASE {fresh}"))
        .execute(&admin)
        .await
        .expect("create");
    let fresh_url = format!(
        "{}/{fresh}",
        admin_database_url().rsplit_once('/').expect("url").0
    );
    assert!(run(&fresh_url, &["migrate"]).status.success());
    let replayed = run(
        &fresh_url,
        &["events", "replay", "--file", file.to_str().expect("path")],
    );
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let fresh_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&fresh_url)
        .await
        .expect("fresh");
    let original = read_model_checksums(&app.pool).await.expect("checksums");
    let copy = read_model_checksums(&fresh_pool).await.expect("checksums");
    assert_eq!(original, copy);
    let again = run(&fresh_url, &["events", "verify"]);
    assert!(again.status.success());
    let again: Value = serde_json::from_slice(&again.stdout).expect("JSON");
    assert_eq!(again["headHash"], report["headHash"]);

    // Status lists every subscriber with its lag.
    let status = run(&app.database_url, &["projections", "status"]);
    assert!(status.status.success());
    let status: Value = serde_json::from_slice(&status.stdout).expect("JSON");
    let names: Vec<&str> = status
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for expected in [
        "catalog",
        "orders",
        "subscriptions",
        "jobs",
        "customers",
        "provisioning",
        "audit",
        "saga",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }

    // Tampering with the live log is caught by `events verify` (exit 1, position named).
    let target: i64 = sqlx::query_scalar("SELECT global_position FROM events WHERE event_type = 'OrderPlaced' ORDER BY global_position LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .expect("target");
    sqlx::query("UPDATE events SET payload = jsonb_set(payload, '{OrderPlaced,customerEmail}', '\"eve@example.com\"') WHERE global_position = $1")
        .bind(target)
        .execute(&app.pool)
        .await
        .expect("tamper");
    let caught = run(&app.database_url, &["events", "verify"]);
    assert!(!caught.status.success());
    let caught: Value = serde_json::from_slice(&caught.stdout).expect("JSON");
    assert_eq!(caught["position"], target);
    assert_eq!(caught["kind"], "changed");
    drop(fresh_pool);
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {fresh} WITH (FORCE)"))
        .execute(&admin)
        .await;
}
