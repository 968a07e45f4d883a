//! What every fault test of issue #9 shares: webhook load that keeps running while a fault is
//! injected, and the check of the invariants once it is over — every accepted order ACTIVE,
//! exactly one `OrderPlaced` per payment intent, every side effect once, the log verifying.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mpanel_projections::feed;
use mpanel_projections::runner::load_checkpoint;
use mpanel_projections::Checkpoint;
use serde_json::Value;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::reliability::Tally;
use crate::{unique_domain, TestApp};

/// Environment for the bench-only instant provisioners: for faults of Postgres or Redis, where
/// what is under test is mpanel's own machinery, not the provisioning servers (and where
/// hundreds of orders must not create zones and accounts on the shared servers).
pub const INSTANT_PROVISIONERS: &[(&str, &str)] = &[
    ("MPANEL_PROVISIONERS", "instant"),
    ("MPANEL_ALLOW_FAKE_PROVISIONERS", "1"),
    ("MPANEL_INSTANT_DELAY_MS", "5"),
];

/// One order the load sent, and what came back.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The payment intent.
    pub payment: String,
    /// The order's domain.
    pub domain: String,
    /// The HTTP status, `None` when the request failed (connection refused, timed out).
    pub status: Option<u16>,
    /// The response's `Content-Type`.
    pub content_type: Option<String>,
    /// The problem document's `type`, for error answers.
    pub problem_type: Option<String>,
}

impl Delivery {
    /// Whether the app took the order (201 new, 200 already taken).
    #[must_use]
    pub fn accepted(&self) -> bool {
        matches!(self.status, Some(200 | 201))
    }

    /// Whether the answer was the documented "try again later": 503 problem+json of type
    /// `unavailable`.
    #[must_use]
    pub fn is_unavailable_problem(&self) -> bool {
        self.status == Some(503)
            && self.content_type.as_deref() == Some("application/problem+json")
            && self.problem_type.as_deref() == Some("urn:mpanel:problem:unavailable")
    }
}

/// What it takes to send webhook orders from a background task.
#[derive(Clone)]
struct Webhook {
    http: reqwest::Client,
    url: String,
    secret: String,
    tenant: String,
    price: Uuid,
}

impl Webhook {
    fn of(app: &TestApp) -> Self {
        Self {
            http: app.http.clone(),
            url: format!("{}/api/orders", app.url),
            secret: app.webhook_secret.clone(),
            tenant: app.tenant.clone(),
            price: app.price_id,
        }
    }

    async fn send(&self, payment: &str, domain: &str) -> Delivery {
        let body = serde_json::json!({
            "tenantSlug": self.tenant,
            "priceId": self.price,
            "customerEmail": "owner@example.com",
            "stripePaymentIntentId": payment,
            "domain": domain,
        });
        let response = self
            .http
            .post(&self.url)
            .header("x-internal-key", &self.secret)
            .json(&body)
            .send()
            .await;
        let mut delivery = Delivery {
            payment: payment.to_owned(),
            domain: domain.to_owned(),
            status: None,
            content_type: None,
            problem_type: None,
        };
        if let Ok(r) = response {
            delivery.status = Some(r.status().as_u16());
            delivery.content_type = r
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Ok(body) = r.json::<Value>().await {
                delivery.problem_type = body["type"].as_str().map(str::to_owned);
            }
        }
        delivery
    }
}

/// Webhook orders sent continuously by a few background senders until [`Load::stop`]: the
/// "orders in flight" of a fault scenario. Each sender posts a new order, waits for the
/// answer, then `pace` before the next.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    senders: Vec<JoinHandle<Vec<Delivery>>>,
}

impl Load {
    /// Starts `senders` concurrent senders of new orders to `app`.
    #[must_use]
    pub fn start(app: &TestApp, senders: usize, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let hook = Webhook::of(app);
        let senders = (0..senders)
            .map(|_| {
                let (stop, sent, hook) = (stop.clone(), sent.clone(), hook.clone());
                tokio::spawn(async move {
                    let mut deliveries = vec![];
                    while !stop.load(Ordering::SeqCst) {
                        let payment = format!("pi_fault_{}", Uuid::new_v4().simple());
                        deliveries.push(hook.send(&payment, &unique_domain()).await);
                        sent.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(pace).await;
                    }
                    deliveries
                })
            })
            .collect();
        Self {
            stop,
            sent,
            senders,
        }
    }

    /// How many orders have been answered (or failed) so far.
    #[must_use]
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops the senders; every order they sent with its answer.
    ///
    /// # Panics
    /// When a sender panicked.
    pub async fn stop(self) -> Vec<Delivery> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = vec![];
        for sender in self.senders {
            all.extend(sender.await.expect("load sender"));
        }
        all
    }
}

/// After a fault: re-sends, as the marketing site would, every order that was not answered
/// 200/201 (a 503 or a dropped connection), until the app takes it; then waits until every
/// order is ACTIVE and FULFILLED and the sealer has caught up, and checks the invariants:
/// exactly one `OrderPlaced` per payment, one `JobSucceeded` per job, one activation per
/// subscription, and `mpanel events verify` passing. Returns the tally (asserted clean).
///
/// # Panics
/// When an invariant does not hold (that is the test failing).
pub async fn settle(app: &TestApp, deliveries: &[Delivery], secs: u64) -> Tally {
    let hook = Webhook::of(app);
    let mut subscriptions: Vec<Uuid> = vec![];
    let mut payments: Vec<String> = vec![];
    for d in deliveries {
        assert_ne!(
            d.status,
            Some(500),
            "an order was answered 500 instead of 503: {d:?}"
        );
        // The client's retry (a duplicate when the first delivery was taken): it must be
        // taken now, with the same ids.
        let body: Value = app
            .eventually(secs, "the app to take a re-sent order", || async {
                let r = hook
                    .http
                    .post(&hook.url)
                    .header("x-internal-key", &hook.secret)
                    .json(&serde_json::json!({
                        "tenantSlug": hook.tenant,
                        "priceId": hook.price,
                        "customerEmail": "owner@example.com",
                        "stripePaymentIntentId": d.payment,
                        "domain": d.domain,
                    }))
                    .send()
                    .await
                    .ok()?;
                if d.accepted() {
                    assert_eq!(
                        r.status().as_u16(),
                        200,
                        "a taken order re-sent must be a duplicate"
                    );
                }
                r.status().is_success().then_some(())?;
                r.json().await.ok()
            })
            .await;
        let sub = body["subscriptionId"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("subscriptionId");
        subscriptions.push(sub);
        payments.push(d.payment.clone());
    }
    let accepted = payments.len();

    app.eventually(
        secs,
        "every accepted order ACTIVE and FULFILLED",
        || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM subscriptions s JOIN orders o ON o.id = s.order_id \
             WHERE s.id = ANY($1) AND s.status = 'ACTIVE' AND o.status = 'FULFILLED'",
            )
            .bind(&subscriptions)
            .fetch_one(&app.pool)
            .await
            .ok()?;
            (usize::try_from(done).ok()? == accepted).then_some(())
        },
    )
    .await;
    sealed(app, secs).await;

    let placed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'OrderPlaced' \
         AND payload->'OrderPlaced'->>'payment' = ANY($1)",
    )
    .bind(&payments)
    .fetch_one(&app.pool)
    .await
    .expect("placed");
    let distinct_placed: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT payload->'OrderPlaced'->>'payment') FROM events \
         WHERE event_type = 'OrderPlaced' AND payload->'OrderPlaced'->>'payment' = ANY($1)",
    )
    .bind(&payments)
    .fetch_one(&app.pool)
    .await
    .expect("distinct placed");
    let extra = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&app.pool)
            .await
            .expect(sql)
    };
    let doubled_jobs = extra(
        "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) AS n FROM events \
         WHERE event_type = 'JobSucceeded' GROUP BY aggregate_id HAVING count(*) > 1) d",
    )
    .await;
    let doubled_activations = extra(
        "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) AS n FROM events \
         WHERE event_type = 'SubscriptionActivated' GROUP BY aggregate_id HAVING count(*) > 1) d",
    )
    .await;
    verify_log(app);

    let lost =
        u64::try_from(accepted).expect("count") - u64::try_from(distinct_placed).expect("count");
    let duplicates = u64::try_from(placed - distinct_placed + doubled_jobs + doubled_activations)
        .expect("count");
    assert_eq!(lost, 0, "accepted orders missing from the log");
    assert_eq!(placed - distinct_placed, 0, "a payment placed two orders");
    assert_eq!(doubled_jobs, 0, "a job succeeded twice");
    assert_eq!(doubled_activations, 0, "a subscription was activated twice");
    Tally {
        accepted: u64::try_from(accepted).expect("count"),
        lost,
        duplicates,
    }
}

/// Runs `mpanel events verify` on the app's database and asserts the hash chain is intact.
///
/// # Panics
/// When the command fails or reports anything but `status: ok`.
pub fn verify_log(app: &TestApp) {
    let out = app.cli(&["events", "verify"]);
    let report: Value = serde_json::from_str(&out).expect("events verify prints JSON");
    assert_eq!(report["status"], "ok", "events verify: {out}");
}

/// Asserts that `mpanel projections rebuild all`, run beside the live app, reproduces the read
/// models the live projectors built: the rebuild applies the log in large set-based batches,
/// the live runners applied it as it came, a few events at a time, so this checks that the
/// projectors' batch folding agrees with applying events one by one (docs/benchmarks.md,
/// "Rebuild"). Waits until every projector has caught up with a quiet log first; a log that
/// moves during the check (a late job) makes it try again.
///
/// # Panics
/// When the rebuilt read models differ, or the log never goes quiet.
pub async fn assert_rebuild_reproduces_live(app: &TestApp) {
    let projectors: Vec<&str> = mpanel_projections::projectors::all()
        .iter()
        .map(mpanel_projections::Subscriber::name)
        .collect();
    for _ in 0..5 {
        let head = caught_up(app, &projectors).await;
        let live = mpanel_projections::audit::read_model_checksums(&app.pool)
            .await
            .expect("checksums");
        let report = app.cli(&["projections", "rebuild", "all"]);
        assert!(!report.trim().is_empty(), "rebuild reported nothing");
        let rebuilt = mpanel_projections::audit::read_model_checksums(&app.pool)
            .await
            .expect("checksums");
        if caught_up(app, &projectors).await != head {
            continue;
        }
        assert_eq!(rebuilt, live, "a rebuild differs from the live read models");
        return;
    }
    panic!("the log kept moving during the rebuild check");
}

/// Waits until every projector's checkpoint is at the head of the feed; returns the head.
async fn caught_up(app: &TestApp, projectors: &[&str]) -> Checkpoint {
    app.eventually(30, "every projector to reach the head", || async {
        let head = feed::head(&app.pool).await.ok()??;
        for name in projectors {
            if load_checkpoint(&app.pool, name).await.ok()? != head {
                return None;
            }
        }
        Some(head)
    })
    .await
}

/// Waits until the audit sealer has sealed every event in the log (and the log stopped
/// growing), so a count or `events verify` sees a quiescent log.
///
/// # Panics
/// On timeout.
pub async fn sealed(app: &TestApp, secs: u64) {
    let last = std::sync::Mutex::new(None);
    app.eventually(secs, "the sealer to catch up with a quiet log", || {
        let last = &last;
        async move {
            let (events, seals): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_seals)",
            )
            .fetch_one(&app.pool)
            .await
            .ok()?;
            let previous = last.lock().expect("lock").replace(events);
            (events > 0 && events == seals && previous == Some(events)).then_some(())
        }
    })
    .await;
}

/// A response's status, `Content-Type` and problem `type` (to check for 503 problem+json).
pub async fn problem_of(r: reqwest::Response) -> (u16, Option<String>, Option<String>) {
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        content_type,
        body["type"].as_str().map(str::to_owned),
    )
}
