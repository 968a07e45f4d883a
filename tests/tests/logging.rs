//! The real server's JSON log lines carry the trace and the request id (docs/LOGGING.md), a
//! caller's `traceparent` is continued into the log and the events' metadata, and spans are
//! exported over OTLP to the configured endpoint (a fake collector on loopback here).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use mpanel_tests::{unique_domain, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

const UPSTREAM_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn lines_of(app: &TestApp, request_id: &str) -> Vec<Value> {
    app.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["request_id"] == request_id)
        .collect()
}

#[tokio::test]
async fn webhook_log_lines_carry_trace_id_span_id_and_request_id() {
    let app = TestApp::spawn().await;
    let payment = format!("pi_{}", Uuid::new_v4().simple());
    let response = app
        .http
        .post(format!("{}/api/orders", app.url))
        .header("x-internal-key", &app.webhook_secret)
        .header(
            "traceparent",
            format!("00-{UPSTREAM_TRACE}-b7ad6b7169203331-01"),
        )
        .json(&app.order_body(&payment, "owner@example.com", "logged.example.net"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::CREATED);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    let order_id = response.json::<Value>().await.expect("body")["orderId"]
        .as_str()
        .expect("orderId")
        .to_owned();

    // The access line is written as the response leaves; give the log a moment.
    let lines = app
        .eventually(10, "the request's log lines", || async {
            let lines = lines_of(&app, &request_id);
            lines
                .iter()
                .any(|l| l["message"] == "request finished")
                .then_some(lines)
        })
        .await;
    let accepted = lines
        .iter()
        .find(|l| l["message"] == "order webhook accepted")
        .expect("the webhook's own line");
    for line in [
        accepted,
        lines
            .iter()
            .find(|l| l["message"] == "request finished")
            .expect("access line"),
    ] {
        assert_eq!(line["trace_id"], UPSTREAM_TRACE, "{line}");
        let span_id = line["span_id"].as_str().expect("span_id");
        assert!(
            span_id.len() == 16 && span_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
    }
    assert_eq!(accepted["order_id"], order_id.as_str());

    // The order's events carry the same trace in their metadata.
    let traceparent: Option<String> = sqlx::query_scalar(
        "SELECT metadata->>'traceparent' FROM events \
         WHERE aggregate_type = 'Order' AND aggregate_id = $1 AND event_type = 'OrderPlaced'",
    )
    .bind(&order_id)
    .fetch_one(&app.pool)
    .await
    .expect("OrderPlaced");
    let traceparent = traceparent.expect("OrderPlaced has a traceparent");
    assert!(
        traceparent.starts_with(&format!("00-{UPSTREAM_TRACE}-")),
        "{traceparent}"
    );

    // Without an upstream trace a request starts its own: still a trace id on every line.
    let response = app
        .http
        .get(format!("{}/api/live", app.url))
        .send()
        .await
        .expect("live");
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = lines_of(&app, &request_id);
    assert!(!lines.is_empty(), "no log line for {request_id}");
    for line in lines {
        let trace_id = line["trace_id"].as_str().expect("trace_id");
        assert!(trace_id.len() == 32 && trace_id != UPSTREAM_TRACE, "{line}");
    }
}

/// What the fake collector received: (path, body) per request.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP collector on loopback: answers 200 to every POST and keeps the bodies.
async fn fake_collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    store.lock().expect("store").push((path, body));
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn spans_are_exported_over_otlp_to_the_configured_endpoint() {
    let (collector, received) = fake_collector().await;
    let app = TestApp::spawn_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let payment = format!("pi_{}", Uuid::new_v4().simple());
    let domain = unique_domain();
    let response = app
        .http
        .post(format!("{}/api/orders", app.url))
        .header("x-internal-key", &app.webhook_secret)
        .header(
            "traceparent",
            format!("00-{UPSTREAM_TRACE}-b7ad6b7169203331-01"),
        )
        .json(&app.order_body(&payment, "owner@example.com", &domain))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::CREATED);

    // The whole chain reaches the collector: the request, the saga, the worker's attempts.
    let trace = hex_bytes(UPSTREAM_TRACE);
    app.eventually(60, "the chain's spans at the collector", || async {
        let received = received.lock().expect("received");
        let all: Vec<u8> = received
            .iter()
            .filter(|(path, _)| path == "/v1/traces")
            .flat_map(|(_, body)| body.iter().copied())
            .collect();
        let complete = contains(&all, &trace)
            && [
                &b"http.request"[..],
                b"saga.react",
                b"SubscriptionActivated",
                b"job.attempt",
                b"dns.provision",
                b"ssh.run_script",
            ]
            .iter()
            .all(|name| contains(&all, name));
        complete.then_some(())
    })
    .await;
    assert!(
        received
            .lock()
            .expect("received")
            .iter()
            .all(|(path, _)| path == "/v1/traces"),
        "only traces are sent, to /v1/traces"
    );
}
