//! Subscription lifecycle end to end against the real servers (issue #10): suspend takes the
//! site and the mailbox out of service and keeps their data, unsuspend restores both, terminate
//! removes the zone, archives the web root and the Maildir; every operation repeated converges;
//! re-provisioning repairs drift; an order cancelled while its provisioning still runs ends with
//! nothing left on any server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mpanel_adapters::provisioners::mail::{LocalPart, MailConfig, SshMailProvisioner};
use mpanel_domain::values::DomainName;
use mpanel_tests::faults::{assert_rebuild_reproduces_live, verify_log};
use mpanel_tests::servers::{delete_zone, env, imap_login, powerdns_proxy, zone, SshProxy};
use mpanel_tests::{unique_domain, TestApp};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

/// Waits until IMAP LOGIN answers OK (`true`) or NO (`false`) as wanted; Dovecot re-reads the
/// passwd-file when its mtime changes, which can take a moment to be noticed.
async fn imap_login_becomes(app: &TestApp, user: &str, password: &str, ok: bool) {
    let what = if ok {
        "IMAP LOGIN accepted"
    } else {
        "IMAP LOGIN refused"
    };
    app.eventually(15, what, || async {
        (imap_login(user, password).starts_with("a1 OK") == ok).then_some(())
    })
    .await;
}

fn hosting_root() -> PathBuf {
    PathBuf::from(env("HOSTING_ROOT"))
}

fn passwd_has(address: &str) -> bool {
    std::fs::read_to_string(env("MAIL_PASSWD_FILE"))
        .expect("passwd-file")
        .lines()
        .any(|l| l.starts_with(&format!("{address}:")))
}

/// Archived copies of `name` (web root or Maildir) under `archive`.
fn archived(archive: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(archive)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{name}.")))
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Staff<'a> {
    app: &'a TestApp,
    token: String,
}

impl<'a> Staff<'a> {
    async fn admin(app: &'a TestApp) -> Self {
        Self {
            app,
            token: app.admin_token().await,
        }
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.app
            .call(Method::POST, path, Some(&self.token), body)
            .await
    }
}

/// Places an order for `domain`; its order and subscription ids.
async fn place(app: &TestApp, domain: &str) -> (String, String) {
    let body = app.place(domain).await;
    (
        body["orderId"].as_str().expect("orderId").to_owned(),
        body["subscriptionId"]
            .as_str()
            .expect("subscriptionId")
            .to_owned(),
    )
}

/// Waits until the read model shows `want` for operation `generation` (the read model lags
/// the command: right after a request it may still show the previous operation's end state).
async fn status_becomes(app: &TestApp, sub: &str, want: &str, generation: i32, secs: u64) {
    app.eventually(
        secs,
        &format!("subscription {want} (generation {generation})"),
        || async {
            let row: Option<(String, i32)> =
                sqlx::query_as("SELECT status, generation FROM subscriptions WHERE id = $1::uuid")
                    .bind(sub)
                    .fetch_optional(&app.pool)
                    .await
                    .expect("subscription");
            (row == Some((want.to_owned(), generation))).then_some(())
        },
    )
    .await;
}

async fn subscription_events(app: &TestApp, sub: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Subscription' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(sub)
    .fetch_all(&app.pool)
    .await
    .expect("events")
}

#[tokio::test]
async fn suspend_unsuspend_and_terminate_converge_on_the_real_servers() {
    let app = TestApp::spawn().await;
    let staff = Staff::admin(&app).await;
    let domain = unique_domain();
    let (_, sub) = place(&app, &domain).await;
    status_becomes(&app, &sub, "ACTIVE", 0, 90).await;

    // The customer's mailbox works before anything happens.
    let mail = SshMailProvisioner::new(MailConfig::from_env().expect("mail config"))
        .expect("mail provisioner");
    let password = format!("pw-{}", Uuid::new_v4().simple());
    mail.set_password(
        &DomainName::parse(&domain).expect("domain"),
        &LocalPart::postmaster(),
        &SecretString::from(password.clone()),
    )
    .await
    .expect("set password");
    let user = format!("postmaster@{domain}");
    imap_login_becomes(&app, &user, &password, true).await;
    let account = hosting_root().join(&domain);
    let vhost = hosting_root().join("vhosts").join(format!("{domain}.conf"));
    let public_html = account.join("public_html");
    std::fs::write(public_html.join("customer.html"), "the customer's page").expect("upload");

    // Bad input changes nothing: no reason, blank reason, not JSON.
    let before = subscription_events(&app, &sub).await.len();
    let (status, problem) = staff
        .post(
            &format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "reason");
    let (status, _) = staff
        .post(
            &format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({ "reason": "   " })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = staff
        .post(
            &format!("/api/subscriptions/{}/suspend", Uuid::new_v4()),
            Some(json!({ "reason": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, problem) = staff
        .post(
            &format!("/api/subscriptions/{sub}/terminate"),
            Some(json!({ "reason": "x".repeat(501) })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, problem) = staff
        .post("/api/subscriptions/not-a-uuid/unsuspend", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "id");
    let r = app
        .http
        .post(format!("{}/api/subscriptions/{sub}/suspend", app.url))
        .bearer_auth(&staff.token)
        .header("content-type", "text/plain")
        .body("reason=unpaid")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(subscription_events(&app, &sub).await.len(), before);

    // Suspend: SUSPENDING at once, SUSPENDED only when the site and the mailbox confirm.
    let (status, body) = staff
        .post(
            &format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({ "reason": "unpaid invoice" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "SUSPENDING");
    assert_eq!(body["operation"], "SUSPEND");
    assert_eq!(body["started"], true);
    status_becomes(&app, &sub, "SUSPENDED", 1, 60).await;
    let conf = std::fs::read_to_string(&vhost).expect("vhost");
    let placeholder = account.join("suspended");
    assert!(
        conf.contains(&format!("root {};", placeholder.display())),
        "the vhost serves the placeholder: {conf}"
    );
    assert!(placeholder.join("index.html").is_file());
    assert_eq!(
        std::fs::read_to_string(public_html.join("customer.html")).expect("kept"),
        "the customer's page",
        "suspension keeps the customer's data"
    );
    imap_login_becomes(&app, &user, &password, false).await;
    let (reason, by): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT status_reason, status_changed_by FROM subscriptions WHERE id = $1::uuid",
    )
    .bind(&sub)
    .fetch_one(&app.pool)
    .await
    .expect("row");
    assert_eq!(reason.as_deref(), Some("unpaid invoice"));
    assert!(by.is_some(), "the actor is recorded");

    // Twice converges: nothing recorded, 200.
    let (status, body) = staff
        .post(
            &format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({ "reason": "unpaid invoice" })),
        )
        .await;
    assert_eq!((status, &body["started"]), (StatusCode::OK, &json!(false)));
    let (status, problem) = staff
        .post(&format!("/api/subscriptions/{sub}/reprovision"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .is_some_and(|d| d.contains("SUSPENDED")));

    // Unsuspend: both work again.
    let (status, body) = staff
        .post(&format!("/api/subscriptions/{sub}/unsuspend"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    status_becomes(&app, &sub, "ACTIVE", 2, 60).await;
    let conf = std::fs::read_to_string(&vhost).expect("vhost");
    assert!(
        conf.contains(&format!("root {};", public_html.display())),
        "the vhost serves the web root again: {conf}"
    );
    imap_login_becomes(&app, &user, &password, true).await;
    let (status, _) = staff
        .post(&format!("/api/subscriptions/{sub}/unsuspend"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "unsuspending an active subscription converges"
    );

    // Terminate: zone gone, web root and Maildir archived, mailbox removed.
    let (status, body) = staff
        .post(
            &format!("/api/subscriptions/{sub}/terminate"),
            Some(json!({ "reason": "contract ended" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    status_becomes(&app, &sub, "TERMINATED", 3, 60).await;
    assert!(zone(&domain).await.is_none(), "zone removed from PowerDNS");
    assert!(!account.exists(), "account moved out of the hosting root");
    assert!(!vhost.exists(), "vhost removed");
    let web_archive = PathBuf::from(format!("{}-archive", env("HOSTING_ROOT")));
    let copies = archived(&web_archive, &domain);
    assert_eq!(copies.len(), 1, "one archived web root: {copies:?}");
    assert_eq!(
        std::fs::read_to_string(copies[0].join("public_html/customer.html")).expect("archived"),
        "the customer's page"
    );
    assert!(!passwd_has(&user), "mailbox line removed");
    let mail_archive = PathBuf::from(format!("{}-archive", env("MAIL_ROOT")));
    assert_eq!(
        archived(&mail_archive, &user).len(),
        1,
        "one archived Maildir"
    );
    imap_login_becomes(&app, &user, &password, false).await;

    // Terminating again converges; nothing else is allowed any more.
    let (status, _) = staff
        .post(
            &format!("/api/subscriptions/{sub}/terminate"),
            Some(json!({ "reason": "again" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = staff
        .post(
            &format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({ "reason": "late" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["type"], "urn:mpanel:problem:conflict");

    // The read models show what the servers have: nothing; every job of the four operations
    // succeeded exactly once.
    for table in ["dns_zones", "hosting_accounts", "mail_accounts"] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE subscription_id = $1::uuid"
        ))
        .bind(&sub)
        .fetch_one(&app.pool)
        .await
        .expect("count");
        assert_eq!(n, 0, "{table} is empty for a terminated subscription");
    }
    let jobs: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT action, generation, status FROM jobs WHERE subscription_id = $1::uuid ORDER BY generation, step",
    )
    .bind(&sub)
    .fetch_all(&app.pool)
    .await
    .expect("jobs");
    let shape: Vec<(&str, i32)> = jobs.iter().map(|(a, g, _)| (a.as_str(), *g)).collect();
    assert_eq!(
        shape,
        vec![
            ("PROVISION", 0),
            ("PROVISION", 0),
            ("PROVISION", 0),
            ("SUSPEND", 1),
            ("SUSPEND", 1),
            ("UNSUSPEND", 2),
            ("UNSUSPEND", 2),
            ("TERMINATE", 3),
            ("TERMINATE", 3),
            ("TERMINATE", 3),
        ]
    );
    assert!(jobs.iter().all(|(_, _, s)| s == "SUCCEEDED"), "{jobs:?}");
    let events = subscription_events(&app, &sub).await;
    for (event, times) in [
        ("SubscriptionSuspended", 1),
        ("SubscriptionUnsuspended", 1),
        ("SubscriptionTerminated", 1),
        ("SubscriptionActivated", 1),
    ] {
        assert_eq!(
            events.iter().filter(|e| *e == event).count(),
            times,
            "{event} in {events:?}"
        );
    }
    // As of the head of the log, the folded view is the live one.
    let head: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&app.pool)
        .await
        .expect("head");
    let get = |path: String| {
        let request = app
            .http
            .get(format!("{}{path}", app.url))
            .bearer_auth(&staff.token);
        async move {
            let r = request.send().await.expect("get");
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.expect("json")
        }
    };
    let live = get(format!("/api/subscriptions/{sub}")).await;
    let mut then = get(format!("/api/subscriptions/{sub}?at={head}")).await;
    then.as_object_mut().expect("object").remove("asOf");
    assert_eq!(then, live);
    assert_eq!(live["operation"], "TERMINATE");
    assert_eq!(live["statusReason"], "contract ended");

    verify_log(&app);
    assert_rebuild_reproduces_live(&app).await;
}

#[tokio::test]
async fn reprovision_repairs_drift_and_repeating_it_converges() {
    let app = TestApp::spawn().await;
    let staff = Staff::admin(&app).await;
    let domain = unique_domain();
    let (_, sub) = place(&app, &domain).await;
    status_becomes(&app, &sub, "ACTIVE", 0, 90).await;

    // Someone deleted the zone by hand and the site's placeholder with it.
    delete_zone(&domain).await;
    assert!(zone(&domain).await.is_none());
    let index = hosting_root()
        .join(&domain)
        .join("public_html")
        .join("index.html");
    std::fs::remove_file(&index).expect("remove index");

    for round in 1..=2 {
        let (status, body) = staff
            .post(&format!("/api/subscriptions/{sub}/reprovision"), None)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "round {round}: {body}");
        assert_eq!(body["status"], "REPROVISIONING");
        assert_eq!(body["generation"], round);
        status_becomes(&app, &sub, "ACTIVE", round, 60).await;
        assert!(zone(&domain).await.is_some(), "round {round}: zone is back");
        assert!(index.is_file(), "round {round}: placeholder is back");
    }
    let reprovisioned = subscription_events(&app, &sub)
        .await
        .iter()
        .filter(|e| *e == "SubscriptionReprovisioned")
        .count();
    assert_eq!(reprovisioned, 2);
    assert_rebuild_reproduces_live(&app).await;
    delete_zone(&domain).await;
}

#[tokio::test]
async fn an_order_cancelled_while_provisioning_runs_leaves_nothing_behind() {
    // PowerDNS answers slowly and one job runs at a time: the DNS job is mid-attempt and the
    // hosting and mail jobs are still waiting when the order is cancelled.
    let (proxy, api) = powerdns_proxy();
    let proxy = proxy.slow(Duration::from_secs(3));
    proxy.up().await;
    let app = TestApp::spawn_with(&[("POWERDNS_API_URL", &api), ("WORKER_CONCURRENCY", "1")]).await;
    let staff = Staff::admin(&app).await;
    let domain = unique_domain();
    let (order, sub) = place(&app, &domain).await;
    let running_job: String = app
        .eventually(30, "a provisioning job running", || async {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM jobs WHERE subscription_id = $1::uuid AND step = 'dns' AND status = 'RUNNING'",
            )
            .bind(&sub)
            .fetch_optional(&app.pool)
            .await
            .expect("jobs")
            .map(|id| id.to_string())
        })
        .await;

    let (status, problem) = staff
        .post(&format!("/api/orders/{order}/cancel"), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, body) = staff
        .post(
            &format!("/api/orders/{order}/cancel"),
            Some(json!({ "reason": "customer changed their mind" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["subscriptionId"], sub.as_str());

    status_becomes(&app, &sub, "TERMINATED", 1, 120).await;
    let order_status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid")
        .bind(&order)
        .fetch_one(&app.pool)
        .await
        .expect("order");
    assert_eq!(order_status, "CANCELLED");

    // Nothing on any server: whatever the running attempt created, the termination removed.
    assert!(zone(&domain).await.is_none(), "no zone left in PowerDNS");
    assert!(
        !hosting_root().join(&domain).exists(),
        "no account left in the hosting root"
    );
    assert!(
        !passwd_has(&format!("postmaster@{domain}")),
        "no mailbox left"
    );

    // The order never became active; the jobs that had not run were cancelled, never started.
    let events = subscription_events(&app, &sub).await;
    assert!(
        !events.iter().any(|e| e == "SubscriptionActivated"),
        "{events:?}"
    );
    let jobs: Vec<(Uuid, String, i32, String, i32)> = sqlx::query_as(
        "SELECT id, action, generation, status, attempts FROM jobs WHERE subscription_id = $1::uuid ORDER BY generation, step",
    )
    .bind(&sub)
    .fetch_all(&app.pool)
    .await
    .expect("jobs");
    let provision: Vec<_> = jobs.iter().filter(|j| j.2 == 0).collect();
    assert_eq!(provision.len(), 3, "{jobs:?}");
    for (id, _, _, status, attempts) in &provision {
        if id.to_string() == running_job {
            assert!(
                status == "SUCCEEDED" || status == "CANCELLED",
                "the running attempt ended: {status}"
            );
        } else {
            assert_eq!(
                (status.as_str(), *attempts),
                ("CANCELLED", 0),
                "a waiting job is cancelled before it starts: {jobs:?}"
            );
        }
    }
    let terminate: Vec<_> = jobs.iter().filter(|j| j.2 == 1).collect();
    assert_eq!(terminate.len(), 3, "{jobs:?}");
    assert!(terminate
        .iter()
        .all(|j| j.1 == "TERMINATE" && j.3 == "SUCCEEDED"));

    // Cancelling again converges; the log still verifies.
    let (status, body) = staff
        .post(
            &format!("/api/orders/{order}/cancel"),
            Some(json!({ "reason": "again" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    verify_log(&app);
    assert_rebuild_reproduces_live(&app).await;
    proxy.down().await;
}

#[tokio::test]
async fn a_suspension_whose_server_is_down_fails_visibly_and_a_repeat_completes_it() {
    // Hosting and mail reach their hosts over SSH through a proxy the test can take down; host
    // keys are checked per port, so the app gets a known_hosts naming the proxy's.
    let ssh = SshProxy::new();
    let proxy = &ssh.proxy;
    proxy.up().await;
    let [port, known_hosts] = ssh.env();
    let app = TestApp::spawn_with(&[port, known_hosts, ("JOB_MAX_ATTEMPTS", "2")]).await;
    let staff = Staff::admin(&app).await;
    let domain = unique_domain();
    let (_, sub) = place(&app, &domain).await;
    status_becomes(&app, &sub, "ACTIVE", 0, 90).await;
    let vhost = hosting_root().join("vhosts").join(format!("{domain}.conf"));
    let public_html = hosting_root().join(&domain).join("public_html");

    proxy.down().await;
    let (status, body) = staff
        .post(
            &format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({ "reason": "abuse report" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (failed_step, last_error): (String, String) = app
        .eventually(60, "the suspension's failure visible", || async {
            sqlx::query_as::<_, (String, i32, Option<String>, Option<String>)>(
                "SELECT status, generation, failed_step, last_error FROM subscriptions WHERE id = $1::uuid",
            )
            .bind(&sub)
            .fetch_optional(&app.pool)
            .await
            .expect("subscription")
            .and_then(|(status, generation, step, error)| {
                (status == "SUSPENDING" && generation == 1)
                    .then_some((step?, error?))
            })
        })
        .await;
    assert!(
        failed_step == "hosting" || failed_step == "mail",
        "{failed_step}"
    );
    assert!(!last_error.is_empty());
    let conf = std::fs::read_to_string(&vhost).expect("vhost");
    assert!(
        conf.contains(&format!("root {};", public_html.display())),
        "nothing was half-suspended: {conf}"
    );

    // The host is back; repeating the request starts the operation again and completes it.
    proxy.up().await;
    let (status, body) = staff
        .post(
            &format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({ "reason": "abuse report" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["generation"], 2);
    status_becomes(&app, &sub, "SUSPENDED", 2, 60).await;
    let conf = std::fs::read_to_string(&vhost).expect("vhost");
    assert!(conf.contains("/suspended;"), "{conf}");
    // The first attempt's jobs were superseded: dead-lettered or not, they end cancelled.
    app.eventually(30, "generation 1's jobs cancelled", || async {
        let first: Vec<(String, bool)> = sqlx::query_as(
            "SELECT status, cancelled FROM jobs WHERE subscription_id = $1::uuid AND generation = 1",
        )
        .bind(&sub)
        .fetch_all(&app.pool)
        .await
        .expect("jobs");
        (first.len() == 2
            && first
                .iter()
                .all(|(status, cancelled)| *cancelled && status == "CANCELLED"))
        .then_some(())
    })
    .await;
    assert_rebuild_reproduces_live(&app).await;
    proxy.down().await;
}
