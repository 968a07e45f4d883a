//! The router's middleware without a database: CORS, the rate limit, the fallback and the
//! OpenAPI document. (Endpoints that need Postgres are tested black-box in `tests/`.)

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use secrecy::SecretString;
use tower::ServiceExt;

use super::rate_limit::RateLimitSettings;
use super::{openapi, router, AppState};
use crate::bus::CommandBus;

const KEY: &str = "0123456789abcdef-webhook";

fn state() -> AppState {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("lazy pool");
    let bus = Arc::new(CommandBus::new(&pool));
    AppState::new(pool, bus, &SecretString::from(KEY))
}

async fn send(app: &axum::Router, request: Request<Body>) -> Response {
    app.clone().oneshot(request).await.expect("infallible")
}

fn from(ip: [u8; 4], method: Method, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .extension(ConnectInfo(SocketAddr::from((ip, 40_000))))
}

#[tokio::test]
async fn without_configured_origins_no_cors_header_is_sent() {
    let app = router(state());
    let response = send(
        &app,
        from([192, 0, 2, 1], Method::GET, "/api/live")
            .header(header::ORIGIN, "https://shop.example.com")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}

#[tokio::test]
async fn configured_origins_get_cors_and_others_do_not() {
    let app = router(state().with_cors_origins(&["https://shop.example.com".to_owned()]));
    let preflight = |origin: &str, headers: &str| {
        from([192, 0, 2, 1], Method::OPTIONS, "/api/products")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PATCH")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, headers)
            .body(Body::empty())
            .expect("request")
    };
    let allowed = send(
        &app,
        preflight("https://shop.example.com", "authorization,content-type"),
    )
    .await;
    let h = allowed.headers();
    assert_eq!(
        h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok()),
        Some("https://shop.example.com")
    );
    let methods = h
        .get(header::ACCESS_CONTROL_ALLOW_METHODS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    for m in ["GET", "POST", "PATCH", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h
        .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("content-type"));
    assert!(
        !headers.contains("x-internal-key"),
        "the webhook key is server to server: {headers}"
    );

    let other = send(&app, preflight("https://evil.example.net", "authorization")).await;
    assert!(other
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());

    let simple = send(
        &app,
        from([192, 0, 2, 1], Method::GET, "/api/live")
            .header(header::ORIGIN, "https://shop.example.com")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(
        simple
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok()),
        Some("https://shop.example.com")
    );
}

#[tokio::test]
async fn a_client_over_budget_gets_429_problem_json_and_others_do_not() {
    let app = router(state().with_rate_limit(&RateLimitSettings {
        window: std::time::Duration::from_secs(60),
        max_requests: 2,
        credential_max_requests: 50,
    }));
    let get = |ip: [u8; 4], path: &str| {
        from(ip, Method::GET, path)
            .body(Body::empty())
            .expect("request")
    };
    for _ in 0..2 {
        let r = send(&app, get([192, 0, 2, 1], "/no/such/route")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let limited = send(&app, get([192, 0, 2, 1], "/no/such/route")).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let retry_after: u64 = limited
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert!(
        limited.headers().get("x-request-id").is_some(),
        "429s pass through the outer middleware"
    );

    // Another address has its own budget; probes are never limited.
    let other = send(&app, get([192, 0, 2, 2], "/no/such/route")).await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let live = send(&app, get([192, 0, 2, 1], "/api/live")).await;
    assert_eq!(live.status(), StatusCode::OK);

    // A bad webhook key is charged to the address; the right one to the credential.
    let with_key = |key: &str| {
        from([192, 0, 2, 1], Method::GET, "/no/such/route")
            .header("x-internal-key", key)
            .body(Body::empty())
            .expect("request")
    };
    let bad = send(&app, with_key("not-the-key-at-all")).await;
    assert_eq!(bad.status(), StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..10 {
        let good = send(&app, with_key(KEY)).await;
        assert_eq!(good.status(), StatusCode::NOT_FOUND);
    }
}

#[test]
fn the_document_declares_both_security_schemes_and_the_problem_schema() {
    let doc = serde_json::to_value(openapi::document()).expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes[openapi::BEARER]["scheme"], "bearer");
    assert_eq!(schemes[openapi::INTERNAL_KEY]["in"], "header");
    assert_eq!(schemes[openapi::INTERNAL_KEY]["name"], "x-internal-key");
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    // Every security requirement names a declared scheme.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().expect("requirement").keys() {
                    assert!(schemes[name].is_object(), "{method} {path}: {name}");
                }
            }
        }
    }
}

#[test]
fn the_documented_webhook_answer_matches_what_intake_returns() {
    let placed = crate::intake::PlacedOrder {
        order_id: uuid::Uuid::nil(),
        subscription_id: uuid::Uuid::nil(),
        job_ids: vec![],
        status: "PAID",
    };
    let sent = serde_json::to_value(placed).expect("json");
    let mut sent: Vec<&String> = sent.as_object().expect("object").keys().collect();
    sent.sort();
    let doc = serde_json::to_value(openapi::document()).expect("json");
    let mut documented: Vec<&String> = doc["components"]["schemas"]["OrderAccepted"]["properties"]
        .as_object()
        .expect("OrderAccepted is documented")
        .keys()
        .collect();
    documented.sort();
    assert_eq!(sent, documented);
}
