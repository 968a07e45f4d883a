//! `mpanel users create`: the password comes from stdin, never argv, and only its hash is stored.

use std::io::Write;
use std::process::{Command, Stdio};

use mpanel_tests::{mpanel_bin, TestApp};
use reqwest::StatusCode;
use serde_json::json;

fn create(app: &TestApp, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(mpanel_bin())
        .args(["users", "create"])
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mpanel users create");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write password");
    child.wait_with_output().expect("wait")
}

#[tokio::test]
async fn users_create_reads_the_password_from_stdin_and_the_user_can_log_in() {
    let app = TestApp::spawn().await;
    let password = "a long enough support password";
    let out = create(
        &app,
        &[
            "--tenant",
            "migrahosting",
            "--email",
            "Support@MigraHosting.test",
            "--role",
            "support",
        ],
        &format!("{password}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("support@migrahosting.test") && !stdout.contains(password));
    let hash: String = sqlx::query_scalar(
        "SELECT password_hash FROM users WHERE email = 'support@migrahosting.test'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("user row");
    assert!(hash.starts_with("$argon2id$") && !hash.contains(password));
    let r = app
        .http
        .post(format!("{}/api/auth/login", app.url))
        .json(&json!({ "email": "support@migrahosting.test", "password": password }))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);

    // Refusals: same e-mail again, unknown tenant, unknown role, short password, no password.
    for (args, stdin) in [
        (
            vec![
                "--tenant",
                "migrahosting",
                "--email",
                "support@migrahosting.test",
                "--role",
                "support",
            ],
            "another long password\n",
        ),
        (
            vec![
                "--tenant",
                "nosuchtenant",
                "--email",
                "x@example.com",
                "--role",
                "admin",
            ],
            "another long password\n",
        ),
        (
            vec![
                "--tenant",
                "migrahosting",
                "--email",
                "y@example.com",
                "--role",
                "root",
            ],
            "another long password\n",
        ),
        (
            vec![
                "--tenant",
                "migrahosting",
                "--email",
                "z@example.com",
                "--role",
                "admin",
            ],
            "short\n",
        ),
        (
            vec![
                "--tenant",
                "migrahosting",
                "--email",
                "w@example.com",
                "--role",
                "admin",
            ],
            "",
        ),
        (
            vec!["--email", "v@example.com", "--role", "admin"],
            "another long password\n",
        ),
    ] {
        let out = create(&app, &args, stdin);
        assert!(!out.status.success(), "{args:?} should be refused");
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(
        users, 2,
        "only the seeded admin and the new support user exist"
    );
}
