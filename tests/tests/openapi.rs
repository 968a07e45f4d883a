//! `GET /api/openapi.json` black-box: the document is OpenAPI 3.x, documents exactly the routes
//! the router serves, each with its security requirement, and every error as problem+json.

use mpanel_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// No credentials.
    Public,
    /// `Authorization: Bearer <access token>`.
    Bearer,
    /// The marketing site's `x-internal-key`.
    InternalKey,
}

use Security::{Bearer, InternalKey, Public};

/// Every route the router serves. A route added without a `#[utoipa::path]` (or documented
/// without being served) fails the test: update this list with the route.
const ROUTES: &[(&str, &str, Security)] = &[
    ("GET", "/", Public),
    ("GET", "/api/live", Public),
    ("GET", "/api/ready", Public),
    ("GET", "/api/health", Public),
    ("GET", "/metrics", Public),
    ("GET", "/api/openapi.json", Public),
    ("GET", "/api/public/products", Public),
    ("POST", "/api/orders", InternalKey),
    ("GET", "/api/orders", Bearer),
    ("POST", "/api/webhooks/stripe", Public),
    ("POST", "/api/auth/login", Public),
    ("POST", "/api/auth/refresh", Public),
    ("GET", "/api/auth/me", Bearer),
    ("POST", "/api/auth/logout", Bearer),
    ("GET", "/api/products", Bearer),
    ("POST", "/api/products", Bearer),
    ("GET", "/api/products/{id}", Bearer),
    ("PATCH", "/api/products/{id}", Bearer),
    ("DELETE", "/api/products/{id}", Bearer),
    ("POST", "/api/products/{id}/prices", Bearer),
    ("DELETE", "/api/products/{id}/prices/{price_id}", Bearer),
    ("GET", "/api/orders/{id}", Bearer),
    ("GET", "/api/orders/{id}/events", Bearer),
    ("GET", "/api/subscriptions", Bearer),
    ("GET", "/api/subscriptions/{id}", Bearer),
    ("GET", "/api/jobs", Bearer),
    ("GET", "/api/jobs/{id}", Bearer),
    ("POST", "/api/jobs/{id}/retry", Bearer),
    ("POST", "/api/subscriptions/{id}/suspend", Bearer),
    ("POST", "/api/subscriptions/{id}/unsuspend", Bearer),
    ("POST", "/api/subscriptions/{id}/terminate", Bearer),
    ("POST", "/api/subscriptions/{id}/reprovision", Bearer),
    ("POST", "/api/orders/{id}/cancel", Bearer),
    ("GET", "/api/customers", Bearer),
    ("GET", "/api/customers/{id}", Bearer),
    ("GET", "/api/domains", Bearer),
    ("GET", "/api/domains/{domain}", Bearer),
    ("GET", "/api/audit/verify", Bearer),
    ("GET", "/api/audit/events", Bearer),
];

/// Probes are never rate limited, so they document no 429.
const UNLIMITED: &[&str] = &["/api/live", "/api/ready", "/api/health", "/metrics"];

fn security_of(op: &Value) -> Security {
    let names: Vec<&str> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys().map(String::as_str))
        .collect();
    match names.as_slice() {
        [] => Public,
        ["bearer"] => Bearer,
        ["internalKey"] => InternalKey,
        other => panic!("unexpected security requirement {other:?}"),
    }
}

async fn document(app: &TestApp) -> Value {
    let r = app
        .http
        .get(format!("{}/api/openapi.json", app.url))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).expect("the document is JSON")
}

#[tokio::test]
async fn the_document_lists_every_served_route_with_its_security() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;

    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3."), "{version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["internalKey"]["type"], "apiKey");
    assert_eq!(schemes["internalKey"]["in"], "header");
    assert_eq!(schemes["internalKey"]["name"], "x-internal-key");

    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if !op.is_object() || op.get("responses").is_none() {
                continue; // path-level parameters and the like
            }
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(
        documented, expected,
        "documented operations differ from the routes"
    );

    for (method, path, security) in ROUTES {
        let op = &doc["paths"][path][method.to_lowercase()];
        assert_eq!(security_of(op), *security, "{method} {path}");
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success response"
        );
        for (status, response) in responses {
            if status.starts_with('4') || (status.starts_with('5') && path != &"/api/health") {
                assert!(
                    response["content"]["application/problem+json"].is_object(),
                    "{method} {path} {status}: errors are problem+json"
                );
            }
        }
        if *security != Public {
            assert!(
                responses.contains_key("401"),
                "{method} {path}: credentials can be refused"
            );
        }
        if !UNLIMITED.contains(path) {
            assert!(
                responses["429"]["headers"]["Retry-After"].is_object(),
                "{method} {path}: documents its rate limit"
            );
        }
        for param in path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        {
            let declared = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["in"] == "path" && p["name"] == param);
            assert!(declared, "{method} {path}: path parameter {param}");
        }
    }

    // Every documented route is served: none falls through to the router's fallback (404
    // "no such route") or answers 405.
    for (method, path, _) in ROUTES {
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{price_id}", "00000000-0000-0000-0000-000000000000")
            .replace("{domain}", "example.com");
        let r = app
            .http
            .request(
                Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{}{concrete}", app.url),
            )
            .send()
            .await
            .expect("request");
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["detail"] == "no such route"),
            "{method} {path} is documented but not served"
        );
    }
    let unknown = app
        .http
        .get(format!("{}/api/no-such-route", app.url))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}
