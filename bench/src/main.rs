//! `mpanel-loadgen`: posts distinct, valid orders to one or more mpanel APIs and prints one JSON
//! line with accepted orders per second and latency percentiles.
//!
//! Two modes: closed loop (`--concurrency N --count M`: N requests in flight until M are done —
//! throughput) and open loop (`--rate R --seconds S`: R new orders per second regardless of
//! answers — latency under a steady load). Each order has a fresh payment intent and domain, so
//! every request does the full intake work (no duplicate short-cut).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use uuid::Uuid;

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

struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    latencies_us: tokio::sync::Mutex<Vec<u64>>,
}

async fn one(client: &reqwest::Client, url: &str, args: &Args, tally: &Tally) {
    let started = Instant::now();
    let result = client
        .post(format!("{url}/api/orders"))
        .header("x-internal-key", &args.key)
        .json(&order(args))
        .send()
        .await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match result {
        Ok(r) if r.status().is_success() => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            tally.latencies_us.lock().await.push(micros);
        }
        _ => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
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
        latencies_us: tokio::sync::Mutex::new(Vec::new()),
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
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                let (client, args, tally, next) =
                    (client.clone(), args.clone(), tally.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= args.count {
                            break;
                        }
                        let url = &args.urls[usize::try_from(i).unwrap_or(0) % args.urls.len()];
                        one(&client, url, &args, &tally).await;
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = tally.latencies_us.lock().await.clone();
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
