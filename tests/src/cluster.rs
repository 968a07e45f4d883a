//! A multi-process harness: one database, several `mpanel` processes of any role (`serve`,
//! `api`, `worker`, `runners`) sharing it and one Redis prefix — the scale-out deployment, on
//! one machine.
//!
//! Each process gets its own log file and, in its `DATABASE_URL`, an `application_name` equal to
//! its name, so a test can see in `pg_stat_activity`/`pg_locks` which process leads which feed
//! subscriber. API processes listen on `PORT`; the others serve `/metrics` and `/api/live` on
//! `METRICS_PORT`.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

use super::{free_port, mpanel_bin, random_hex, seeded_database};

/// One database (migrated and seeded) and the environment every process of it shares.
pub struct Cluster {
    /// The database.
    pub pool: PgPool,
    /// Its URL (without `application_name`).
    pub database_url: String,
    /// The marketing webhook secret.
    pub webhook_secret: String,
    /// The demo tenant's slug.
    pub tenant: String,
    /// The demo price.
    pub price_id: Uuid,
    /// An HTTP client.
    pub http: reqwest::Client,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    db: String,
}

impl Cluster {
    /// Creates, migrates and seeds a database; `env` is added to (and overrides) the defaults
    /// every process of the cluster gets.
    ///
    /// # Panics
    /// When any step fails (this is test setup).
    pub async fn create(env: &[(&str, &str)]) -> Self {
        let (db, database_url, seeded) = seeded_database("mpanel_cl", &random_hex(16)).await;
        let webhook_secret = random_hex(32);
        let redis_prefix = format!("mpanel-test-{}", Uuid::new_v4().simple());
        let jwt_secret = random_hex(32);
        let mut all: Vec<(String, String)> = [
            ("HOST", "127.0.0.1"),
            ("MARKETING_WEBHOOK_SECRET", webhook_secret.as_str()),
            ("JWT_SECRET", jwt_secret.as_str()),
            ("RUST_LOG", "info"),
            ("REDIS_KEY_PREFIX", redis_prefix.as_str()),
            ("JOB_BACKOFF_BASE_MS", "100"),
            ("JOB_BACKOFF_CAP_MS", "1000"),
            ("SWEEP_INTERVAL_MS", "200"),
            ("RATE_LIMIT_MAX_REQUESTS", "1000000"),
            ("DATABASE_POOL_MAX", "8"),
            ("METRICS_REFRESH_MS", "1000"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push(((*k).to_owned(), (*v).to_owned()));
        }
        let log_dir = std::env::temp_dir().join("mpanel-tests");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        Self {
            pool: PgPoolOptions::new()
                .max_connections(4)
                .connect(&database_url)
                .await
                .expect("connect cluster db"),
            database_url,
            webhook_secret,
            tenant: seeded["tenant"].as_str().expect("tenant").to_owned(),
            price_id: Uuid::parse_str(seeded["priceId"].as_str().expect("priceId")).expect("uuid"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            env: all,
            log_dir,
            db,
        }
    }

    /// Starts `mpanel <role>` named `name` with `env` on top of the cluster's. Does not wait;
    /// see [`Process::wait_up`].
    ///
    /// # Panics
    /// When the binary cannot be started.
    #[must_use]
    pub fn spawn(&self, role: &str, name: &str, env: &[(&str, &str)]) -> Process {
        let port = free_port();
        let log_path = self.log_dir.join(format!("{}-{name}.log", self.db));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut command = Command::new(mpanel_bin());
        command.arg(role).stdout(Stdio::null()).stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command.env(
            "DATABASE_URL",
            format!("{}?application_name={name}", self.database_url),
        );
        let has_api = role == "serve" || role == "api";
        command.env(
            if has_api { "PORT" } else { "METRICS_PORT" },
            port.to_string(),
        );
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start mpanel");
        Process {
            name: name.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            has_api,
            log_path,
            child,
        }
    }

    /// A valid order body for the demo price.
    #[must_use]
    pub fn order_body(&self, payment: &str, domain: &str) -> Value {
        serde_json::json!({
            "tenantSlug": self.tenant,
            "priceId": self.price_id,
            "customerEmail": "owner@example.com",
            "stripePaymentIntentId": payment,
            "domain": domain,
        })
    }

    /// POSTs an order to `process` with the right key; the status.
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn post_order(&self, process: &Process, body: &Value) -> u16 {
        self.http
            .post(format!("{}/api/orders", process.url))
            .header("x-internal-key", &self.webhook_secret)
            .json(body)
            .send()
            .await
            .expect("order request")
            .status()
            .as_u16()
    }

    /// Polls `check` every 100 ms until it returns `Some`, for at most `secs` seconds.
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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One running `mpanel` process of a cluster.
pub struct Process {
    /// Its name (also its Postgres `application_name`).
    pub name: String,
    /// Base URL of its API (`api`, `serve`) or metrics listener (`worker`, `runners`).
    pub url: String,
    /// Whether it serves the API.
    pub has_api: bool,
    /// Where its stderr goes.
    pub log_path: PathBuf,
    child: Child,
}

impl Process {
    /// Waits until it answers: `/api/ready` for the API roles, `/api/live` for the others.
    ///
    /// # Panics
    /// When it does not within 30 s, or exits.
    pub async fn wait_up(&mut self, http: &reqwest::Client) {
        let probe = if self.has_api {
            "/api/ready"
        } else {
            "/api/live"
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{}{probe}", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}; log: {}", self.name, self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not come up; log: {}", self.name, self.log());
    }

    /// The OS process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `SIGTERM` (as an orchestrator stopping it would).
    ///
    /// # Panics
    /// When `kill` cannot be run.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// `SIGKILL`: no graceful anything, as a crash or an OOM kill.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its `/metrics` text.
    ///
    /// # Panics
    /// When it does not answer 200.
    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        let r = http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("/metrics");
        assert!(
            r.status().is_success(),
            "{} /metrics: {}",
            self.name,
            r.status()
        );
        r.text().await.expect("metrics text")
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every sample of a Prometheus text exposition: `(name, labels, value)`.
#[must_use]
pub fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some((name.to_owned(), labels.to_owned(), value))
        })
        .collect()
}
