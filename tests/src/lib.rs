//! Black-box test harness: runs the real `mpanel` binary against the real local stack.
//!
//! Each [`TestApp`] gets a database of its own (created here, migrated and seeded by the binary
//! itself), a free loopback port and fresh secrets, then `mpanel serve` is started as a child
//! process and awaited on `/api/ready`. Tests talk HTTP to it and read the database to check what
//! was (or was not) written. The stack's services come from `scripts/test.sh`, which exports
//! `DATABASE_URL` and the rest.

pub mod cluster;
pub mod faults;
pub mod private;
pub mod proxy;
pub mod reliability;
pub mod servers;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

/// The mpanel binary under test: `MPANEL_BIN`, else `target/debug/mpanel` of this workspace.
#[must_use]
pub fn mpanel_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("MPANEL_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("debug/mpanel")
}

/// The Postgres URL of the stack (a database the tests may create others beside).
///
/// # Panics
/// When `DATABASE_URL` is not set: run the suite through `scripts/test.sh`.
#[must_use]
pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must be set; run the suite with scripts/test.sh")
}

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("DATABASE_URL has a database name");
    format!("{base}/{db}")
}

fn random_hex(bytes: usize) -> String {
    (0..bytes.div_ceil(16))
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect::<String>()[..bytes * 2]
        .to_owned()
}

/// Creates a fresh database named `<prefix>_<uuid>`, migrates and seeds it with the real
/// binary (`mpanel migrate`, `mpanel seed demo` with `admin_password`); returns its name, its URL
/// and the seed's JSON output.
///
/// # Panics
/// When any step fails (this is test setup).
pub async fn seeded_database(prefix: &str, admin_password: &str) -> (String, String, Value) {
    seeded_database_on(&admin_database_url(), prefix, admin_password).await
}

/// [`seeded_database`] on the Postgres server `admin_url` points at (a private server that a
/// fault test may restart, say) instead of the stack's.
///
/// # Panics
/// When any step fails (this is test setup).
pub async fn seeded_database_on(
    admin_url: &str,
    prefix: &str,
    admin_password: &str,
) -> (String, String, Value) {
    let admin_url = admin_url.to_owned();
    let db = format!("{prefix}_{}", Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("connect admin db");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let database_url = with_database(&admin_url, &db);
    let bin = mpanel_bin();
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p mpanel` (scripts/test.sh does)",
        bin.display()
    );
    let status = Command::new(&bin)
        .arg("migrate")
        .env("DATABASE_URL", &database_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run migrate");
    assert!(status.success(), "mpanel migrate failed");
    let seeded = Command::new(&bin)
        .args(["seed", "demo"])
        .env("DATABASE_URL", &database_url)
        .env("MPANEL_SEED_ADMIN_PASSWORD", admin_password)
        .stderr(Stdio::null())
        .output()
        .expect("run seed");
    assert!(seeded.status.success(), "mpanel seed demo failed");
    let seeded: Value = serde_json::from_slice(&seeded.stdout).expect("seed prints JSON");
    (db, database_url, seeded)
}

/// A domain no other test uses (its zone, account and mailbox are this test's alone).
#[must_use]
pub fn unique_domain() -> String {
    format!(
        "t{}.example.net",
        &Uuid::new_v4().simple().to_string()[..12]
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running mpanel with its own database.
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The app's database.
    pub pool: PgPool,
    /// Its `DATABASE_URL`.
    pub database_url: String,
    /// The marketing webhook secret it accepts.
    pub webhook_secret: String,
    /// The Stripe endpoint signing secret it verifies `Stripe-Signature` with.
    pub stripe_secret: String,
    /// The seeded admin password (to check it never appears in logs).
    pub admin_password: String,
    /// The JWT secret.
    pub jwt_secret: String,
    /// The demo tenant's slug.
    pub tenant: String,
    /// The demo price.
    pub price_id: Uuid,
    /// The demo product.
    pub product_id: Uuid,
    /// Where the server's stderr goes.
    pub log_path: PathBuf,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// This app's Redis key prefix (apps share the stack's Redis).
    pub redis_prefix: String,
    port: u16,
    env: Vec<(String, String)>,
    child: Child,
}

impl TestApp {
    /// Creates a database, migrates and seeds it with the binary, and starts `mpanel serve`.
    ///
    /// # Panics
    /// When any step fails (this is test setup).
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Like [`TestApp::spawn`], with extra environment for `mpanel serve` (overriding the
    /// defaults: fast retries, a short sweep interval).
    ///
    /// # Panics
    /// When any step fails (this is test setup).
    pub async fn spawn_with(env: &[(&str, &str)]) -> Self {
        Self::spawn_on(&admin_database_url(), env).await
    }

    /// Like [`TestApp::spawn_with`], with the app's database on the Postgres server `admin_url`
    /// points at — a private one the test may stop and start without disturbing other tests.
    ///
    /// # Panics
    /// When any step fails (this is test setup).
    pub async fn spawn_on(admin_url: &str, env: &[(&str, &str)]) -> Self {
        let webhook_secret = random_hex(32);
        let jwt_secret = random_hex(32);
        let stripe_secret = format!("whsec_{}", random_hex(24));
        let admin_password = random_hex(16);
        let (db, database_url, seeded) =
            seeded_database_on(admin_url, "mpanel_bb", &admin_password).await;
        let bin = mpanel_bin();
        let uuid =
            |k: &str| Uuid::parse_str(seeded[k].as_str().expect("seed field")).expect("uuid");

        let port = free_port();
        let log_dir = std::env::temp_dir().join("mpanel-tests");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log_path = log_dir.join(format!("{db}.log"));
        let redis_prefix = format!("mpanel-test-{}", Uuid::new_v4().simple());
        let mut all_env: Vec<(String, String)> = [
            ("DATABASE_URL", database_url.as_str()),
            ("HOST", "127.0.0.1"),
            ("MARKETING_WEBHOOK_SECRET", &webhook_secret),
            ("JWT_SECRET", &jwt_secret),
            ("STRIPE_WEBHOOK_SECRET", &stripe_secret),
            ("RUST_LOG", "info"),
            ("REDIS_KEY_PREFIX", &redis_prefix),
            ("JOB_BACKOFF_BASE_MS", "100"),
            ("JOB_BACKOFF_CAP_MS", "1000"),
            ("SWEEP_INTERVAL_MS", "200"),
            // Every test talks from 127.0.0.1: lift the per-client budget (100 per 15 min) so
            // only `tests/rate_limit.rs`, which sets its own, meets it.
            ("RATE_LIMIT_MAX_REQUESTS", "1000000"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        all_env.push(("PORT".into(), port.to_string()));
        for (k, v) in env {
            all_env.retain(|(key, _)| key != k);
            all_env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let child = start_serve(&bin, &all_env, &log_path);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url)
            .await
            .expect("connect app db");
        let app = Self {
            url: format!("http://127.0.0.1:{port}"),
            pool,
            database_url,
            webhook_secret,
            stripe_secret,
            admin_password,
            jwt_secret,
            tenant: seeded["tenant"].as_str().expect("tenant").to_owned(),
            price_id: uuid("priceId"),
            product_id: uuid("productId"),
            log_path,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            redis_prefix,
            port,
            env: all_env,
            child,
        };
        app.wait_ready().await;
        app
    }

    /// Stops the server and starts it again on the same database and port, with `env`
    /// overriding what it ran with before (e.g. a repaired provisioner address).
    ///
    /// # Panics
    /// When the server does not come back.
    pub async fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.kill();
        for (k, v) in env {
            self.env.retain(|(key, _)| key != k);
            self.env.push(((*k).to_owned(), (*v).to_owned()));
        }
        debug_assert!(self
            .env
            .iter()
            .any(|(k, v)| k == "PORT" && *v == self.port.to_string()));
        self.child = start_serve(&mpanel_bin(), &self.env, &self.log_path);
        self.wait_ready().await;
    }

    /// Kills the server with SIGKILL (no graceful shutdown), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs an `mpanel` subcommand against this app's database; returns its stdout.
    ///
    /// # Panics
    /// When the command fails.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(mpanel_bin())
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .output()
            .expect("run mpanel");
        assert!(
            out.status.success(),
            "mpanel {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self
                .http
                .get(format!("{}/api/ready", self.url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "mpanel did not become ready; log: {}",
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        );
    }

    /// A valid order body for the demo price.
    #[must_use]
    pub fn order_body(&self, payment: &str, email: &str, domain: &str) -> Value {
        serde_json::json!({
            "tenantSlug": self.tenant,
            "priceId": self.price_id,
            "customerEmail": email,
            "stripePaymentIntentId": payment,
            "domain": domain,
        })
    }

    /// POSTs an order with the right key.
    pub async fn post_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/orders", self.url))
            .header("x-internal-key", &self.webhook_secret)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Places an order for `domain` (a new payment intent, `owner@example.com`) and returns the
    /// 201 body (`orderId`, `subscriptionId`, `jobIds`).
    ///
    /// # Panics
    /// When the order is not answered 201.
    pub async fn place(&self, domain: &str) -> Value {
        let payment = format!("pi_{}", Uuid::new_v4().simple());
        let r = self
            .post_order(&self.order_body(&payment, "owner@example.com", domain))
            .await;
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
        r.json().await.expect("body")
    }

    /// Logs `email` in; its access token.
    ///
    /// # Panics
    /// When the login is not answered 200.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let r = self
            .http
            .post(format!("{}/api/auth/login", self.url))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), reqwest::StatusCode::OK, "login {email}");
        let body: Value = r.json().await.expect("session");
        body["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_owned()
    }

    /// The seeded admin's (`admin@migrahosting.test`) access token, for staff calls.
    ///
    /// # Panics
    /// When the login fails.
    pub async fn admin_token(&self) -> String {
        self.login("admin@migrahosting.test", &self.admin_password)
            .await
    }

    /// Sends `method path`, with `token` as bearer and `body` as JSON when given; the status
    /// and the JSON answer (`Null` when there is none).
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let r = request.send().await.expect("request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// How many events of `event_type` the log holds (all types for `None`).
    pub async fn count_events(&self, event_type: Option<&str>) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE $1::text IS NULL OR event_type = $1")
            .bind(event_type)
            .fetch_one(&self.pool)
            .await
            .expect("count events")
    }

    /// Polls `check` every 50 ms until it returns `Some`, for at most `secs` seconds.
    ///
    /// # Panics
    /// On timeout, with `what`.
    pub async fn eventually<T, F, Fut>(&self, secs: u64, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn start_serve(
    bin: &std::path::Path,
    env: &[(String, String)],
    log_path: &std::path::Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("log file");
    let mut command = Command::new(bin);
    command.arg("serve").stdout(Stdio::null()).stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().expect("start mpanel serve")
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
