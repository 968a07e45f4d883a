//! Provisioning end to end: webhook → saga → Redis → worker → real PowerDNS, sshd and Dovecot
//! → ACTIVE only when every step really succeeded; a failing step is visible and retryable.

use std::time::{Duration, Instant};

use mpanel_adapters::provisioners::mail::{LocalPart, MailConfig, SshMailProvisioner};
use mpanel_domain::values::DomainName;
use mpanel_tests::faults::assert_rebuild_reproduces_live;
use mpanel_tests::reliability::{self, Tally};
use mpanel_tests::servers::{delete_zone, env, imap_login, powerdns_proxy, zone, SshProxy};
use mpanel_tests::{unique_domain, TestApp};
use secrecy::SecretString;
use serde_json::Value;
use uuid::Uuid;

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

/// `dig @127.0.0.1 -p PORT +short NAME A` against the stack's PowerDNS.
fn dig_a(name: &str) -> String {
    let out = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &env("POWERDNS_DNS_PORT"),
            "+short",
            "+time=2",
            "+tries=2",
            name,
            "A",
        ])
        .output()
        .expect("dig (bind9-dnsutils) runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls the subscription through the read model until it is ACTIVE, asserting on every read
/// that it never claims ACTIVE while a required step is unfinished.
async fn active_and_never_early(app: &TestApp, sub: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut reads = 0;
    loop {
        let row: Option<(String, Vec<String>, Vec<String>)> = sqlx::query_as(
            "SELECT status, required_steps, succeeded_steps FROM subscriptions WHERE id = $1::uuid",
        )
        .bind(sub)
        .fetch_optional(&app.pool)
        .await
        .expect("subscription");
        reads += 1;
        if let Some((status, required, succeeded)) = row {
            if status == "ACTIVE" {
                let mut done = succeeded.clone();
                done.sort();
                assert_eq!(
                    done, required,
                    "ACTIVE with unfinished steps after {reads} reads"
                );
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "subscription {sub} not ACTIVE after {reads} reads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_paid_order_is_provisioned_on_the_real_servers_and_only_then_activated() {
    let app = TestApp::spawn().await;
    let domain = unique_domain();
    let body = app.place(&domain).await;
    let sub = body["subscriptionId"]
        .as_str()
        .expect("subscriptionId")
        .to_owned();
    let order_id = body["orderId"].as_str().expect("orderId").to_owned();

    active_and_never_early(&app, &sub, 60).await;
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

    // Resolvers see the zone: apex and www answer with the web address.
    let web_ip = std::env::var("HOSTING_WEB_IPV4").unwrap_or_else(|_| "127.0.0.1".into());
    assert_eq!(dig_a(&domain), web_ip);
    assert_eq!(dig_a(&format!("www.{domain}")), web_ip);

    // The mailbox works: once the customer sets a password (the only way to get one, ADR 0012),
    // IMAP LOGIN succeeds.
    let mail = SshMailProvisioner::new(MailConfig::from_env().expect("mail config"))
        .expect("mail provisioner");
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let name = DomainName::parse(&domain).expect("domain");
    mail.set_password(
        &name,
        &LocalPart::postmaster(),
        &SecretString::from(password.clone()),
    )
    .await
    .expect("set password");
    let user = format!("postmaster@{domain}");
    let started = Instant::now();
    loop {
        let answer = imap_login(&user, &password);
        if answer.starts_with("a1 OK") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "IMAP LOGIN refused: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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
    delete_zone(&domain).await;
}

/// Two paid orders may name one domain (a customer paying twice, two customers racing). Both
/// subscriptions activate — the provisioners converge on the one zone, account and mailbox —
/// and every read model keeps up: the provisioning projector once stopped for good here,
/// looking the second-to-register subscription's resources up under the other's name.
#[tokio::test]
async fn two_paid_orders_for_one_domain_both_activate_and_the_read_models_keep_up() {
    let app = TestApp::spawn().await;
    let domain = unique_domain();
    let (first, second) = tokio::join!(app.place(&domain), app.place(&domain));
    let subs: Vec<String> = [&first, &second]
        .iter()
        .map(|b| {
            b["subscriptionId"]
                .as_str()
                .expect("subscriptionId")
                .to_owned()
        })
        .collect();
    assert_ne!(subs[0], subs[1], "two payments, two subscriptions");
    for sub in &subs {
        active_and_never_early(&app, sub, 60).await;
    }

    // Every projector reaches the head (a stuck one fails here), and a rebuild agrees.
    assert_rebuild_reproduces_live(&app).await;
    // One zone, one account, one mailbox, each shown as confirmed by one of the two.
    for table in ["dns_zones", "hosting_accounts", "mail_accounts"] {
        let owners: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT subscription_id::text FROM {table} WHERE domain = $1"
        ))
        .bind(&domain)
        .fetch_all(&app.pool)
        .await
        .expect("owners");
        assert_eq!(owners.len(), 1, "{table}: {owners:?}");
        assert!(subs.contains(&owners[0]), "{table} owned by {owners:?}");
    }
    delete_zone(&domain).await;
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
    let body = app.place(&domain).await;
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
    delete_zone(&domain).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    reliability::fault(
        "PowerDNS unreachable until the job dead-letters: PROVISIONING_FAILED visible, operator retry (CLI) activates",
        file!(),
        "a_failing_step_is_visible_then_an_operator_retry_activates",
        Tally {
            accepted: 1,
            ..Tally::default()
        },
    );
}

#[tokio::test]
async fn powerdns_down_records_each_failed_attempt_and_recovers_by_itself_when_it_returns() {
    let (proxy, url) = powerdns_proxy();
    let app = TestApp::spawn_with(&[
        ("POWERDNS_API_URL", url.as_str()),
        ("JOB_MAX_ATTEMPTS", "50"),
        ("JOB_BACKOFF_BASE_MS", "200"),
        ("JOB_BACKOFF_CAP_MS", "400"),
    ])
    .await;
    let domain = unique_domain();
    let body = app.place(&domain).await;
    let sub = body["subscriptionId"]
        .as_str()
        .expect("subscriptionId")
        .to_owned();
    let dns_job = body["jobIds"][0].as_str().expect("dns job").to_owned();

    // While PowerDNS is "down", attempts fail and each failure is recorded.
    let failures = app
        .eventually(30, "two failed DNS attempts recorded", || async {
            let errors: Vec<Value> = sqlx::query_scalar(
                "SELECT payload FROM events WHERE aggregate_id = $1 AND event_type = 'JobAttemptFailed' ORDER BY sequence",
            )
            .bind(&dns_job)
            .fetch_all(&app.pool)
            .await
            .expect("attempts");
            (errors.len() >= 2).then_some(errors)
        })
        .await;
    assert!(failures.iter().all(|f| f["JobAttemptFailed"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("transient"))));
    let (status, ..) = subscription(&app, &sub).await.expect("subscription");
    assert_ne!(status, "ACTIVE");

    // PowerDNS comes back: the next retry succeeds, no operator needed.
    proxy.up().await;
    active_and_never_early(&app, &sub, 60).await;
    assert!(zone(&domain).await.is_some());
    delete_zone(&domain).await;
    reliability::fault(
        "PowerDNS down during provisioning: each failed attempt recorded, recovery by itself when it returns",
        file!(),
        "powerdns_down_records_each_failed_attempt_and_recovers_by_itself_when_it_returns",
        Tally {
            accepted: 1,
            ..Tally::default()
        },
    );
}

#[tokio::test]
async fn a_killed_server_and_a_flushed_queue_lose_no_order_and_repeat_no_side_effect() {
    // PowerDNS answers slowly, so DNS jobs are mid-flight when the server is killed.
    let (proxy, url) = powerdns_proxy();
    let proxy = proxy.slow(Duration::from_millis(1500));
    proxy.up().await;
    let mut app =
        TestApp::spawn_with(&[("POWERDNS_API_URL", url.as_str()), ("JOB_LEASE_SECS", "4")]).await;
    let domains: Vec<String> = (0..4).map(|_| unique_domain()).collect();
    let mut subs = vec![];
    for d in &domains {
        subs.push(
            app.place(d).await["subscriptionId"]
                .as_str()
                .expect("sub")
                .to_owned(),
        );
    }
    app.eventually(20, "a DNS job running (leased, no outcome yet)", || async {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE step = 'dns' AND status = 'RUNNING'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("running");
        (running > 0).then_some(())
    })
    .await;

    // Crash: SIGKILL mid-job, and the queue's stream is gone (what FLUSHALL does to our keys).
    app.kill();
    let redis_url = env("REDIS_URL");
    let flushed = std::process::Command::new("redis-cli")
        .args([
            "-u",
            &redis_url,
            "DEL",
            &format!("{}:jobs", app.redis_prefix),
        ])
        .output()
        .expect("redis-cli");
    assert!(flushed.status.success());

    // The server comes back and PowerDNS answers at normal speed again.
    proxy.set_delay(Duration::ZERO);
    app.restart_with(&[]).await;
    for sub in &subs {
        active_and_never_early(&app, sub, 90).await;
    }
    // Each side effect exactly once: one zone, one account directory, one passwd line, and
    // one recorded success per job.
    let passwd = std::fs::read_to_string(env("MAIL_PASSWD_FILE")).expect("passwd-file");
    for d in &domains {
        assert!(zone(d).await.is_some(), "{d} zone");
        let lines = passwd
            .lines()
            .filter(|l| l.starts_with(&format!("postmaster@{d}:")))
            .count();
        assert_eq!(lines, 1, "{d} mailbox once");
        assert!(std::path::Path::new(&env("HOSTING_ROOT"))
            .join(d)
            .join("public_html/index.html")
            .is_file());
    }
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id FROM events WHERE event_type = 'JobSucceeded' \
         GROUP BY aggregate_id HAVING count(*) > 1) d",
    )
    .fetch_one(&app.pool)
    .await
    .expect("doubles");
    assert_eq!(doubled, 0, "no job succeeded twice");
    let activations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'SubscriptionActivated'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("activations");
    assert_eq!(activations, 4);
    for d in &domains {
        delete_zone(d).await;
    }
    reliability::fault(
        "kill -9 of mpanel serve mid-provisioning and its Redis stream deleted, then restart: each zone, account and mailbox created once",
        file!(),
        "a_killed_server_and_a_flushed_queue_lose_no_order_and_repeat_no_side_effect",
        Tally {
            accepted: u64::try_from(domains.len()).expect("count"),
            ..Tally::default()
        },
    );
}

#[tokio::test]
async fn ssh_sessions_are_kept_between_scripts_and_a_closed_one_is_replaced() {
    let ssh = SshProxy::new();
    ssh.proxy.up().await;
    let target = ssh.target();
    for i in 0..5 {
        let out = target
            .run_script("echo \"run $1\"", &[i.to_string()], None)
            .await
            .expect("script runs");
        assert!(out.success(), "{out:?}");
        assert_eq!(out.stdout.trim(), format!("run {i}"));
    }
    assert_eq!(ssh.proxy.accepted(), 1, "five scripts over one connection");

    // The server drops every connection (a restart): the kept session is dead, and the next
    // script opens a new one instead of failing.
    ssh.proxy.down().await;
    ssh.proxy.up().await;
    let out = target
        .run_script("echo again", &[], None)
        .await
        .expect("script runs after the server dropped the kept session");
    assert_eq!(out.stdout.trim(), "again");
    assert_eq!(ssh.proxy.accepted(), 2);

    // Down for good: the kept session goes with the server, and the failure is a retryable one.
    ssh.proxy.down().await;
    let error = target
        .run_script("echo never", &[], None)
        .await
        .expect_err("the server is down");
    assert!(error.is_transient(), "{error}");
}
