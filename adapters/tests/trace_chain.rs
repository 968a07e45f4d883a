//! One trace from the webhook to the activation, checked in-process with an in-memory span
//! exporter: the real router, feed runners, saga and worker (with instant provisioners) on a
//! fresh database and the stack's Redis, under the subscriber `telemetry::init` installs.
//!
//! The webhook arrives with an upstream `traceparent`; every span of the chain (request, saga
//! reactions, job attempts, provisioner calls) must belong to that trace, every event of the
//! order must carry it in its metadata, and the JSON log lines of the request must carry its
//! `trace_id` and `request_id`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use mpanel_adapters::bus::CommandBus;
use mpanel_adapters::http::{router, AppState};
use mpanel_adapters::provisioners::{ProvisionError, ProvisionRequest, Provisioner};
use mpanel_adapters::queue::JobQueue;
use mpanel_adapters::telemetry::{self, LogFormat};
use mpanel_adapters::worker::{ProvisionerSet, Worker, WorkerConfig};
use mpanel_domain::job::StepOutcome;
use mpanel_domain::saga::SagaPolicy;
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::Email;
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use secrecy::SecretString;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use tower::ServiceExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

const WEBHOOK_KEY: &str = "trace-chain-webhook-key-0123456789";
const UPSTREAM_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UPSTREAM_SPAN: &str = "00f067aa0ba902b7";

/// Succeeds at once with a plausible outcome.
struct Instant_;

#[async_trait]
impl Provisioner for Instant_ {
    async fn provision(&self, request: &ProvisionRequest) -> Result<StepOutcome, ProvisionError> {
        let domain = request.domain.as_str();
        Ok(match request.step {
            ProvisioningStep::Dns => StepOutcome::Dns {
                zone: format!("{domain}."),
                records: vec![],
            },
            ProvisioningStep::Hosting => StepOutcome::Hosting {
                server: "web-test".into(),
                system_user: "htest".into(),
                web_root: format!("/srv/{domain}/public"),
                vhost_path: format!("/srv/vhosts/{domain}.conf"),
            },
            ProvisioningStep::Mail => StepOutcome::Mail {
                address: format!("owner@{domain}"),
                server: "mail-test".into(),
                maildir: format!("/srv/mail/{domain}/owner"),
            },
        })
    }
}

/// Log lines written by the subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Logs {
    fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

fn env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} must be set; run the suite with scripts/test.sh"))
}

/// A fresh, migrated database beside the stack's `DATABASE_URL`.
async fn fresh_database() -> (PgPool, String) {
    let admin_url = env("DATABASE_URL");
    let name = format!("mpanel_trace_{}", Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("admin database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("a database name");
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&format!("{base}/{name}"))
        .await
        .expect("connect");
    mpanel_adapters::MIGRATOR
        .run(&pool)
        .await
        .expect("migrations");
    (pool, name)
}

async fn drop_database(name: &str) {
    if let Ok(admin) = PgPoolOptions::new()
        .max_connections(1)
        .connect(&env("DATABASE_URL"))
        .await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attribute_str(span: &SpanData, key: &str) -> Option<String> {
    attribute(span, key).map(Value::to_string)
}

async fn poll<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_saga_worker_and_activation_share_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    telemetry::install_propagator();
    let logs = Logs::default();
    tracing::subscriber::set_global_default(telemetry::subscriber(
        &provider,
        EnvFilter::new("info,sqlx=warn"),
        LogFormat::Json,
        logs.clone(),
    ))
    .expect("the only subscriber of this test binary");

    let (pool, db_name) = fresh_database().await;
    let bus = Arc::new(CommandBus::new(&pool));
    let seeded = mpanel_adapters::seed::demo(
        &pool,
        &bus,
        &Email::parse("admin@trace.test").expect("email"),
        &SecretString::from("trace-chain-password".to_owned()),
    )
    .await
    .expect("seed");
    let prefix = format!("mpanel-trace-{}", Uuid::new_v4().simple());
    let queue = JobQueue::connect(&env("REDIS_URL"), &prefix)
        .await
        .expect("redis");

    let (stop, stopped) = watch::channel(false);
    let mut tasks = mpanel_adapters::runtime::spawn_runners(
        &pool,
        mpanel_adapters::runtime::subscribers(&bus, SagaPolicy::default(), Some(queue.clone())),
        &stopped,
    );
    let provisioners = ProvisioningStep::ALL
        .iter()
        .fold(ProvisionerSet::default(), |set, step| {
            set.with(*step, Arc::new(Instant_))
        });
    let worker = Worker::new(
        bus.clone(),
        queue.clone(),
        provisioners,
        WorkerConfig::default(),
    );
    tasks.push(tokio::spawn(worker.run(stopped.clone())));

    let app = router(AppState::new(
        pool.clone(),
        bus.clone(),
        &SecretString::from(WEBHOOK_KEY.to_owned()),
    ));
    let domain = format!(
        "t{}.example.net",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let body = json!({
        "tenantSlug": seeded.tenant,
        "priceId": seeded.price_id,
        "customerEmail": "owner@example.com",
        "stripePaymentIntentId": format!("pi_{}", Uuid::new_v4().simple()),
        "domain": domain,
    });
    let response = app
        .oneshot(
            Request::builder()
                .method(Method::POST)
                .uri("/api/orders")
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-internal-key", WEBHOOK_KEY)
                .header(
                    "traceparent",
                    format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"),
                )
                .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))))
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::CREATED);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    let placed: serde_json::Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body"),
    )
    .expect("JSON body");
    let order_id = placed["orderId"].as_str().expect("orderId").to_owned();

    poll(60, "the order to be fulfilled", || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM orders WHERE id = $1::uuid")
            .bind(&order_id)
            .fetch_optional(&pool)
            .await
            .expect("orders")
            .filter(|s| s == "FULFILLED")
    })
    .await;
    // The saga's reaction to OrderFulfilled ends after the read model shows it.
    poll(10, "the saga to pass OrderFulfilled", || async {
        let spans = exporter.get_finished_spans().expect("spans");
        spans
            .iter()
            .any(|s| {
                s.name == "saga.react"
                    && attribute_str(s, "event_type").as_deref() == Some("OrderFulfilled")
            })
            .then_some(())
    })
    .await;
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");

    // Every span of the chain is in the upstream trace.
    let in_trace = |s: &&SpanData| s.span_context.trace_id().to_string() == UPSTREAM_TRACE;
    let request = spans
        .iter()
        .find(|s| {
            s.name == "http.request" && attribute_str(s, "route").as_deref() == Some("/api/orders")
        })
        .expect("an http.request span for the webhook");
    assert!(
        in_trace(&request),
        "the request continues the upstream trace"
    );
    assert_eq!(request.parent_span_id.to_string(), UPSTREAM_SPAN);
    assert_eq!(
        attribute_str(request, "request_id").as_deref(),
        Some(request_id.as_str())
    );

    let reactions: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.name == "saga.react"
                && matches!(
                    attribute_str(s, "aggregate_type").as_deref(),
                    Some("Order" | "Subscription" | "Job")
                )
        })
        .collect();
    let reacted: HashSet<String> = reactions
        .iter()
        .filter_map(|s| attribute_str(s, "event_type"))
        .collect();
    for expected in [
        "OrderPlaced",
        "SubscriptionOpened",
        "JobScheduled",
        "JobStarted",
        "JobSucceeded",
        "ProvisioningStepSucceeded",
        "SubscriptionActivated",
        "OrderFulfilled",
    ] {
        assert!(reacted.contains(expected), "no saga.react for {expected}");
    }
    for reaction in &reactions {
        assert!(
            in_trace(reaction),
            "saga.react for {:?} is in trace {}",
            attribute_str(reaction, "event_type"),
            reaction.span_context.trace_id()
        );
    }
    let order_placed = reactions
        .iter()
        .find(|s| attribute_str(s, "event_type").as_deref() == Some("OrderPlaced"))
        .expect("OrderPlaced reaction");
    assert_eq!(
        order_placed.parent_span_id,
        request.span_context.span_id(),
        "the saga continues from the request's span"
    );

    let attempts: Vec<&SpanData> = spans.iter().filter(|s| s.name == "job.attempt").collect();
    let steps: HashSet<String> = attempts
        .iter()
        .filter_map(|s| attribute_str(s, "step"))
        .collect();
    assert_eq!(steps.len(), 3, "one attempt per step: {steps:?}");
    for attempt in &attempts {
        assert!(in_trace(attempt), "job.attempt outside the trace");
        assert_eq!(
            attribute(attempt, "attempt").map(ToString::to_string),
            Some("1".to_owned())
        );
    }
    let attempt_ids: HashSet<_> = attempts.iter().map(|s| s.span_context.span_id()).collect();
    for name in ["dns.provision", "hosting.provision", "mail.provision"] {
        let call = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"));
        assert!(in_trace(&call), "{name} outside the trace");
        assert!(
            attempt_ids.contains(&call.parent_span_id),
            "{name} is a child of a job attempt"
        );
    }

    // Every event of the order, its subscription and its jobs carries the trace.
    let metadata: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT event_type, metadata->>'traceparent' FROM events \
         WHERE aggregate_type IN ('Order', 'Subscription', 'Job') ORDER BY global_position",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    assert!(metadata.len() >= 15, "the whole chain: {metadata:?}");
    for (event_type, traceparent) in &metadata {
        let traceparent = traceparent
            .as_deref()
            .unwrap_or_else(|| panic!("{event_type} has no traceparent"));
        assert_eq!(
            telemetry::trace_id_of(traceparent),
            Some(UPSTREAM_TRACE),
            "{event_type}: {traceparent}"
        );
    }
    let activated_tp = metadata
        .iter()
        .find(|(t, _)| t == "SubscriptionActivated")
        .and_then(|(_, tp)| tp.clone())
        .expect("SubscriptionActivated");
    let succeeded_reaction_ids: HashSet<String> = reactions
        .iter()
        .filter(|s| attribute_str(s, "event_type").as_deref() == Some("JobSucceeded"))
        .map(|s| s.span_context.span_id().to_string())
        .collect();
    assert!(
        succeeded_reaction_ids
            .iter()
            .any(|id| activated_tp.contains(id.as_str())),
        "SubscriptionActivated was written by a saga reaction to JobSucceeded: {activated_tp}"
    );

    // The request's log lines carry its trace and request id.
    let lines = logs.lines();
    let accepted = lines
        .iter()
        .find(|l| l["message"] == "order webhook accepted")
        .expect("the webhook's log line");
    assert_eq!(accepted["trace_id"], UPSTREAM_TRACE, "{accepted}");
    assert_eq!(accepted["request_id"], request_id.as_str(), "{accepted}");
    assert_eq!(accepted["span_id"].as_str().map(str::len), Some(16));
    let finished = lines
        .iter()
        .find(|l| l["message"] == "request finished" && l["request_id"] == request_id.as_str())
        .expect("the access line");
    assert_eq!(finished["trace_id"], UPSTREAM_TRACE);
    assert_eq!(finished["status"], 201);

    queue.quit().await;
    pool.close().await;
    drop_database(&db_name).await;
}
