//! The binary's start-up contract: bad configuration fails at start, naming the variable.

use std::process::Command;

fn mpanel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mpanel"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", "redis://127.0.0.1:1");
    c
}

#[test]
fn serve_refuses_a_short_jwt_secret_and_names_it() {
    let out = mpanel()
        .arg("serve")
        .env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/db")
        .env("MARKETING_WEBHOOK_SECRET", "0123456789abcdef0123")
        .env("JWT_SECRET", "too-short-secret-value")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
    assert!(
        !stderr.contains("too-short-secret-value"),
        "the secret is not echoed: {stderr}"
    );
}

#[test]
fn serve_refuses_a_missing_database_url() {
    let out = mpanel()
        .arg("serve")
        .env("MARKETING_WEBHOOK_SECRET", "0123456789abcdef0123")
        .env("JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

#[test]
fn seed_refuses_a_missing_admin_password_without_touching_anything() {
    let out = mpanel()
        .args(["seed", "demo"])
        .env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/db")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MPANEL_SEED_ADMIN_PASSWORD"));
}
