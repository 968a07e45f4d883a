//! `mpanel-loadgen`: posts distinct, valid orders to one or more mpanel APIs and prints one JSON
//! line with accepted orders per second and latency percentiles.
//!
//! Two modes: closed loop (`--concurrency N --count M`: N requests in flight until M are done —
//! throughput) and open loop (`--rate R --seconds S`: R new orders per second regardless of
//! answers — latency under a steady load). Each order has a fresh payment intent and domain, so
//! every request does the full intake work (no duplicate short-cut).
//!
//! The closed loop shares two cores with the server and Postgres, so what it spends is taken
//! from what it measures: each of its N workers keeps one HTTP/1.1 connection and drives it
//! through hyper's connection API (no client pool, no per-request URL parsing), an order's
//! unique values come from a per-run random prefix and a counter, not a random draw each, and
//! the whole generator runs on one thread (a quarter of a core at 15 k orders/s; two worker
//! threads cost ~15 % more CPU per order in wake-ups between them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use uuid::Uuid;

/// The load generator's allocator, the same as the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for the order webhook.
#[derive(Parser, Debug)]
struct Args {
    /// Base URLs of the APIs (requests are spread round-robin).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The webhook secret (read from the environment by default).
    #[arg(long, env = "MARKETING_WEBHOOK_SECRET", hide_env_values = true)]
    key: String,
    /// Tenant slug.
    #[arg(long, default_value = "migrahosting")]
    tenant: String,
    /// Price id to order.
    #[arg(long, env = "DEMO_PRICE_ID")]
    price: String,
    /// Closed loop: requests in flight.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Closed loop: total requests.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Open loop: orders per second (overrides the closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Open loop: for how long.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// A label echoed in the output.
    #[arg(long, default_value = "intake")]
    label: String,
}

fn order(args: &Args) -> serde_json::Value {
    let id = Uuid::new_v4().simple().to_string();
    json!({
        "tenantSlug": args.tenant,
        "priceId": args.price,
        "customerEmail": format!("bench-{}@example.com", &id[..12]),
        "stripePaymentIntentId": format!("pi_bench_{id}"),
        "domain": format!("b{}.bench.example", &id[..16]),
    })
}

/// Order `i` of a closed-loop run whose orders all carry `run` (unique per run): the same
/// shape as [`order`], without a random draw per request.
fn numbered_order(args: &Args, run: &str, i: u64) -> String {
    let id = format!("{run}{i:012x}");
    json!({
        "tenantSlug": args.tenant,
        "priceId": args.price,
        "customerEmail": format!("bench-{id}@example.com"),
        "stripePaymentIntentId": format!("pi_bench_{id}"),
        "domain": format!("b{id}.bench.example"),
    })
    .to_string()
}

/// A closed-loop worker: one keep-alive connection to `url`, one request at a time, until the
/// run's `count` orders are taken.
async fn closed_loop_worker(
    url: String,
    args: Arc<Args>,
    run: Arc<str>,
    next: Arc<AtomicU64>,
    tally: Arc<Tally>,
) -> Result<()> {
    let authority = url
        .strip_prefix("http://")
        .context("the closed loop speaks plain http:// only")?
        .trim_end_matches('/')
        .to_owned();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= args.count {
            return Ok(());
        }
        let request = hyper::Request::post("/api/orders")
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("x-internal-key", &args.key)
            .body(Full::new(Bytes::from(numbered_order(&args, &run, i))))?;
        let started = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(request).await;
        let ok = match response {
            Ok(response) => {
                let success = response.status().is_success();
                // Read the answer to the end so the connection can carry the next request.
                response.into_body().collect().await.is_ok() && success
            }
            Err(_) => false,
        };
        tally.record(ok, started);
    }
}

struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

impl Tally {
    /// Counts one answer; a success's latency since `started` joins the percentiles.
    fn record(&self, ok: bool, started: Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut latencies) = self.latencies_us.lock() {
                latencies.push(micros);
            }
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn one(client: &reqwest::Client, url: &str, args: &Args, tally: &Tally) {
    let started = Instant::now();
    let result = client
        .post(format!("{url}/api/orders"))
        .header("x-internal-key", &args.key)
        .json(&order(args))
        .send()
        .await;
    tally.record(matches!(result, Ok(r) if r.status().is_success()), started);
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    let tally = Arc::new(Tally {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latencies_us: std::sync::Mutex::new(Vec::new()),
    });
    let started = Instant::now();
    if let Some(rate) = args.rate {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let total = rate * args.seconds;
        let mut handles = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for i in 0..total {
            tick.tick().await;
            let (client, args, tally) = (client.clone(), args.clone(), tally.clone());
            let url = args.urls[usize::try_from(i).unwrap_or(0) % args.urls.len()].clone();
            handles.push(tokio::spawn(async move {
                one(&client, &url, &args, &tally).await
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    } else {
        let next = Arc::new(AtomicU64::new(0));
        let run: Arc<str> = Uuid::new_v4().simple().to_string()[..12].into();
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|w| {
                let url = args.urls[w % args.urls.len()].clone();
                tokio::spawn(closed_loop_worker(
                    url,
                    args.clone(),
                    run.clone(),
                    next.clone(),
                    tally.clone(),
                ))
            })
            .collect();
        for w in workers {
            w.await.context("a closed-loop worker panicked")??;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = tally
        .latencies_us
        .lock()
        .map_err(|_| anyhow::anyhow!("a worker panicked while recording"))?
        .clone();
    latencies.sort_unstable();
    let ok = tally.ok.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "label": args.label,
            "ok": ok,
            "failed": tally.failed.load(Ordering::Relaxed),
            "seconds": elapsed,
            "opsPerSecond": ok as f64 / elapsed.max(f64::EPSILON),
            "p50Ms": percentile(&latencies, 50.0),
            "p99Ms": percentile(&latencies, 99.0),
            "maxMs": latencies.last().map_or(0.0, |m| *m as f64 / 1000.0),
        })
    );
    Ok(())
}
