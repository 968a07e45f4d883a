//! Provisioning end to end: webhook → saga → Redis → worker → real PowerDNS, sshd and Dovecot
//! → ACTIVE only when every step really succeeded; a failing step is visible and retryable.

use std::time::Duration;

use mpanel_tests::TestApp;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

fn env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} must be set; run the suite with scripts/test.sh"))
}

fn unique_domain() -> String {
    format!(
        "t{}.example.net",
        &Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn zone(domain: &str) -> Option<Value> {
    let r = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/servers/localhost/zones/{domain}.",
            env("POWERDNS_API_URL")
        ))
        .header("X-API-Key", env("POWERDNS_API_KEY"))
        .send()
        .await
        .expect("PowerDNS API");
    if r.status() == StatusCode::NOT_FOUND {
        return None;
    }
    Some(r.json().await.expect("zone JSON"))
}

async fn remove_zone(domain: &str) {
    let _ = reqwest::Client::new()
        .delete(format!(
            "{}/api/v1/servers/localhost/zones/{domain}.",
            env("POWERDNS_API_URL")
        ))
        .header("X-API-Key", env("POWERDNS_API_KEY"))
        .send()
        .await;
}

async fn subscription(
    app: &TestApp,
    id: &str,
) -> Option<(String, Vec<String>, Option<String>, Option<String>)> {
    sqlx::query_as("SELECT status, succeeded_steps, failed_step, last_error FROM subscriptions WHERE id = $1::uuid")
        .bind(id)
        .fetch_optional(&app.pool)
        .await
        .expect("subscription")
}

async fn place(app: &TestApp, domain: &str) -> Value {
    let payment = format!("pi_{}", Uuid::new_v4().simple());
    let r = app
        .post_order(&app.order_body(&payment, "owner@example.com", domain))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.expect("body")
}

#[tokio::test]
async fn a_paid_order_is_provisioned_on_the_real_servers_and_only_then_activated() {
    let app = TestApp::spawn().await;
    let domain = unique_domain();
    let body = place(&app, &domain).await;
    let sub = body["subscriptionId"]
        .as_str()
        .expect("subscriptionId")
        .to_owned();
    let order_id = body["orderId"].as_str().expect("orderId").to_owned();

    app.eventually(60, "subscription ACTIVE", || async {
        subscription(&app, &sub)
            .await
            .filter(|s| s.0 == "ACTIVE")
            .map(|_| ())
    })
    .await;
    let order_status: String = app
        .eventually(10, "order fulfilled", || async {
            sqlx::query_scalar::<_, String>("SELECT status FROM orders WHERE id = $1::uuid")
                .bind(&order_id)
                .fetch_optional(&app.pool)
                .await
                .expect("order")
                .filter(|s| s == "FULFILLED")
        })
        .await;
    assert_eq!(order_status, "FULFILLED");

    // Activation came after all three confirmed steps, in the log's own order.
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Subscription' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&sub)
    .fetch_all(&app.pool)
    .await
    .expect("events");
    assert_eq!(
        types.first().map(String::as_str),
        Some("SubscriptionOpened")
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("SubscriptionActivated")
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "ProvisioningStepSucceeded")
            .count(),
        3
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "SubscriptionActivated")
            .count(),
        1
    );

    // The servers really have it.
    let zone = zone(&domain).await.expect("zone exists in PowerDNS");
    let rrsets = zone["rrsets"].as_array().expect("rrsets");
    let www = rrsets
        .iter()
        .find(|r| r["name"] == format!("www.{domain}.") && r["type"] == "A")
        .expect("www A");
    assert!(!www["records"].as_array().expect("records").is_empty());
    assert!(rrsets.iter().any(|r| r["type"] == "MX"));
    let web_root = std::path::Path::new(&env("HOSTING_ROOT"))
        .join(&domain)
        .join("public_html");
    assert!(
        web_root.join("index.html").is_file(),
        "{} has a placeholder page",
        web_root.display()
    );
    let passwd = std::fs::read_to_string(env("MAIL_PASSWD_FILE")).expect("passwd-file");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with(&format!("postmaster@{domain}:"))),
        "mailbox in passwd-file"
    );

    // And the read models say so.
    let zones: i64 = sqlx::query_scalar("SELECT count(*) FROM dns_zones WHERE domain = $1")
        .bind(&domain)
        .fetch_one(&app.pool)
        .await
        .expect("zones");
    let hosting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM hosting_accounts WHERE domain = $1")
            .bind(&domain)
            .fetch_one(&app.pool)
            .await
            .expect("hosting");
    let mail: i64 = sqlx::query_scalar("SELECT count(*) FROM mail_accounts WHERE domain = $1")
        .bind(&domain)
        .fetch_one(&app.pool)
        .await
        .expect("mail");
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM dns_records WHERE zone = $1")
        .bind(format!("{domain}."))
        .fetch_one(&app.pool)
        .await
        .expect("records");
    assert_eq!((zones, hosting, mail), (1, 1, 1));
    assert!(records >= 4, "SOA, NS, A, www A, MX projected");

    // No secret of the stack reached the log.
    let log = app.log();
    for secret in [
        env("POWERDNS_API_KEY"),
        app.webhook_secret.clone(),
        app.admin_password.clone(),
    ] {
        assert!(!log.contains(&secret), "a secret leaked into the log");
    }
    remove_zone(&domain).await;
}

#[tokio::test]
async fn a_failing_step_is_visible_then_an_operator_retry_activates() {
    // PowerDNS "down": nothing listens on port 1. Two attempts, then dead-letter.
    let mut app = TestApp::spawn_with(&[
        ("POWERDNS_API_URL", "http://127.0.0.1:1"),
        ("JOB_MAX_ATTEMPTS", "2"),
    ])
    .await;
    let domain = unique_domain();
    let body = place(&app, &domain).await;
    let sub = body["subscriptionId"]
        .as_str()
        .expect("subscriptionId")
        .to_owned();
    let dns_job = body["jobIds"][0].as_str().expect("dns job id").to_owned();

    let (status, succeeded, failed_step, last_error) = app
        .eventually(
            60,
            "PROVISIONING_FAILED with the other steps done",
            || async {
                subscription(&app, &sub)
                    .await
                    .filter(|s| s.0 == "PROVISIONING_FAILED" && s.1.len() == 2)
            },
        )
        .await;
    assert_eq!(status, "PROVISIONING_FAILED");
    assert_eq!(failed_step.as_deref(), Some("dns"));
    assert!(succeeded.contains(&"hosting".to_owned()) && succeeded.contains(&"mail".to_owned()));
    let error = last_error.expect("the error is visible");
    assert!(error.contains("transient"), "{error}");
    assert!(!error.contains(&env("POWERDNS_API_KEY")));

    // Every attempt's error is kept in the job's events; the job is dead-lettered.
    let attempts: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'Job' AND aggregate_id = $1 AND event_type = 'JobAttemptFailed' ORDER BY sequence",
    )
    .bind(&dns_job)
    .fetch_all(&app.pool)
    .await
    .expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|a| a["JobAttemptFailed"]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty())));
    let job_status: String = app
        .eventually(10, "job dead-lettered", || async {
            sqlx::query_scalar::<_, String>("SELECT status FROM jobs WHERE id = $1::uuid")
                .bind(&dns_job)
                .fetch_optional(&app.pool)
                .await
                .expect("job")
                .filter(|s| s == "DEAD_LETTERED")
        })
        .await;
    assert_eq!(job_status, "DEAD_LETTERED");
    assert!(zone(&domain).await.is_none());

    // The operator repairs the address, restarts, and retries the job.
    app.restart_with(&[("POWERDNS_API_URL", &env("POWERDNS_API_URL"))])
        .await;
    let out = app.cli(&["jobs", "retry", &dns_job]);
    assert!(out.contains("\"series\":1"), "{out}");
    app.eventually(60, "subscription ACTIVE after the retry", || async {
        subscription(&app, &sub)
            .await
            .filter(|s| s.0 == "ACTIVE")
            .map(|_| ())
    })
    .await;
    assert!(zone(&domain).await.is_some());
    remove_zone(&domain).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}
