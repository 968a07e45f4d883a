//! Fault tier (issue #9): the provisioning servers refuse work. sshd refusing connections (the
//! web and mail hosts unreachable) and Dovecot's passwd-file not writable: the steps fail
//! visibly (PROVISIONING_FAILED naming the step and the error), and once the operator has fixed
//! the host, a retry — `mpanel jobs retry` or `POST /api/jobs/{id}/retry` — brings every
//! subscription to ACTIVE, each mailbox and account created once. Both faults are made private
//! to the test (a proxy in front of the stack's sshd, a passwd-file of its own), so the shared
//! servers stay healthy for everyone else.

use std::path::{Path, PathBuf};
use std::process::Command;

use mpanel_tests::faults::{settle, Delivery};
use mpanel_tests::reliability;
use mpanel_tests::servers::{delete_zone, env, SshProxy};
use mpanel_tests::{unique_domain, TestApp};
use reqwest::StatusCode;
use uuid::Uuid;

/// Places `n` orders; their deliveries (all 201).
async fn place(app: &TestApp, n: usize) -> Vec<Delivery> {
    let mut placed = vec![];
    for _ in 0..n {
        let payment = format!("pi_{}", Uuid::new_v4().simple());
        let domain = unique_domain();
        let r = app
            .post_order(&app.order_body(&payment, "owner@example.com", &domain))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        placed.push(Delivery {
            payment,
            domain,
            status: Some(201),
            content_type: None,
            problem_type: None,
        });
    }
    placed
}

/// Waits until every job of `step` for `domains` is dead-lettered and every subscription is
/// PROVISIONING_FAILED with a visible error; returns the jobs and the errors.
async fn failed_visibly(app: &TestApp, domains: &[String], step: &str) -> (Vec<Uuid>, Vec<String>) {
    let jobs: Vec<Uuid> = app
        .eventually(120, &format!("every {step} job dead-lettered"), || async {
            let jobs: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE step = $1 AND domain = ANY($2) AND status = 'DEAD_LETTERED'",
            )
            .bind(step)
            .bind(domains)
            .fetch_all(&app.pool)
            .await
            .ok()?;
            (jobs.len() == domains.len()).then_some(jobs)
        })
        .await;
    let errors: Vec<String> = app
        .eventually(60, "every subscription PROVISIONING_FAILED", || async {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT status, last_error FROM subscriptions WHERE domain = ANY($1)",
            )
            .bind(domains)
            .fetch_all(&app.pool)
            .await
            .ok()?;
            (rows.len() == domains.len() && rows.iter().all(|r| r.0 == "PROVISIONING_FAILED"))
                .then(|| rows.into_iter().filter_map(|r| r.1).collect())
        })
        .await;
    assert_eq!(errors.len(), domains.len(), "each failure shows its error");
    (jobs, errors)
}

/// Retries `jobs`, half through the CLI and half through the API, as an operator would.
async fn operator_retries(app: &TestApp, jobs: &[Uuid]) {
    let token = app.admin_token().await;
    for (i, job) in jobs.iter().enumerate() {
        if i % 2 == 0 {
            let out = app.cli(&["jobs", "retry", &job.to_string()]);
            assert!(out.contains("\"series\":1"), "{out}");
        } else {
            let r = app
                .http
                .post(format!("{}/api/jobs/{job}/retry", app.url))
                .bearer_auth(&token)
                .send()
                .await
                .expect("retry");
            assert_eq!(r.status(), StatusCode::ACCEPTED, "API retry of {job}");
        }
    }
}

fn passwd_lines(passwd: &Path, domain: &str) -> usize {
    std::fs::read_to_string(passwd)
        .expect("passwd-file")
        .lines()
        .filter(|l| l.starts_with(&format!("postmaster@{domain}:")))
        .count()
}

async fn remove_zones(domains: &[String]) {
    for d in domains {
        delete_zone(d).await;
    }
}

#[tokio::test]
async fn sshd_refusing_connections_fails_visibly_and_an_operator_retry_activates() {
    // A proxy in front of the stack's sshd, down: connections to it are refused. Host keys are
    // checked per port, so the app gets a known_hosts naming the proxy's.
    let ssh = SshProxy::new();
    let proxy = &ssh.proxy;
    let [port, known_hosts] = ssh.env();
    let app = TestApp::spawn_with(&[port, known_hosts, ("JOB_MAX_ATTEMPTS", "2")]).await;
    let orders = place(&app, 3).await;
    let domains: Vec<String> = orders.iter().map(|d| d.domain.clone()).collect();

    // Hosting and mail both go over SSH: both fail, visibly, and nothing was half-made.
    let (hosting_jobs, errors) = failed_visibly(&app, &domains, "hosting").await;
    let (mail_jobs, _) = failed_visibly(&app, &domains, "mail").await;
    assert!(
        errors.iter().all(|e| !e.contains(&env("SSH_KEY_PATH"))),
        "no key path in errors: {errors:?}"
    );
    let passwd = PathBuf::from(env("MAIL_PASSWD_FILE"));
    for d in &domains {
        assert_eq!(passwd_lines(&passwd, d), 0, "no mailbox for {d} yet");
        assert!(!Path::new(&env("HOSTING_ROOT")).join(d).exists());
    }

    // sshd accepts again; the operator retries every dead-lettered job.
    proxy.up().await;
    let all: Vec<Uuid> = hosting_jobs.into_iter().chain(mail_jobs).collect();
    operator_retries(&app, &all).await;
    let tally = settle(&app, &orders, 180).await;
    for d in &domains {
        assert_eq!(passwd_lines(&passwd, d), 1, "one mailbox for {d}");
        assert!(Path::new(&env("HOSTING_ROOT"))
            .join(d)
            .join("public_html/index.html")
            .is_file());
    }
    remove_zones(&domains).await;
    reliability::fault(
        "sshd refusing connections during provisioning: hosting and mail fail visibly, an \
         operator retry (CLI and API) activates",
        file!(),
        "sshd_refusing_connections_fails_visibly_and_an_operator_retry_activates",
        tally,
    );
}

/// A passwd-file made immutable (`chattr +i`): not even root may write it. Made writable again
/// on drop, so a failing test leaves nothing undeletable behind.
struct ImmutableFile(PathBuf);

impl ImmutableFile {
    fn set(path: &Path, immutable: bool) {
        let flag = if immutable { "+i" } else { "-i" };
        let out = Command::new("chattr")
            .arg(flag)
            .arg(path)
            .output()
            .expect("chattr (e2fsprogs) runs");
        assert!(
            out.status.success(),
            "chattr {flag} {}: {} (the fault needs a filesystem with the immutable flag)",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn new(path: &Path) -> Self {
        Self::set(path, true);
        Self(path.to_owned())
    }
}

impl Drop for ImmutableFile {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

#[tokio::test]
async fn an_unwritable_passwd_file_fails_mail_visibly_and_an_operator_retry_activates() {
    // A passwd-file and mail root of this test's own (the stack's Dovecot keeps its own).
    let dir = PathBuf::from(format!(
        "/var/tmp/mpanel-faults-mail-{}",
        Uuid::new_v4().simple()
    ));
    let mail_root = dir.join("mail");
    std::fs::create_dir_all(&mail_root).expect("mail root");
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, "").expect("passwd-file");
    let immutable = ImmutableFile::new(&passwd);
    let app = TestApp::spawn_with(&[
        ("MAIL_PASSWD_FILE", passwd.to_str().expect("path")),
        ("MAIL_ROOT", mail_root.to_str().expect("path")),
        ("JOB_MAX_ATTEMPTS", "2"),
    ])
    .await;
    let orders = place(&app, 3).await;
    let domains: Vec<String> = orders.iter().map(|d| d.domain.clone()).collect();

    let (mail_jobs, errors) = failed_visibly(&app, &domains, "mail").await;
    assert!(
        errors.iter().all(|e| e.contains("not writable")),
        "the error names the cause: {errors:?}"
    );
    let failed: Vec<Option<String>> =
        sqlx::query_scalar("SELECT failed_step FROM subscriptions WHERE domain = ANY($1)")
            .bind(&domains)
            .fetch_all(&app.pool)
            .await
            .expect("failed steps");
    assert!(
        failed.iter().all(|s| s.as_deref() == Some("mail")),
        "{failed:?}"
    );
    assert_eq!(std::fs::read_to_string(&passwd).expect("passwd"), "");

    // The operator makes it writable and retries.
    drop(immutable);
    operator_retries(&app, &mail_jobs).await;
    let tally = settle(&app, &orders, 180).await;
    for d in &domains {
        assert_eq!(passwd_lines(&passwd, d), 1, "one mailbox for {d}");
    }
    remove_zones(&domains).await;
    let _ = std::fs::remove_dir_all(&dir);
    reliability::fault(
        "Dovecot passwd-file not writable: mail fails visibly naming the cause, an operator \
         retry after the fix activates",
        file!(),
        "an_unwritable_passwd_file_fails_mail_visibly_and_an_operator_retry_activates",
        tally,
    );
}
