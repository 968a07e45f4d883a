//! Public endpoints black-box: catalog, health, readiness, liveness, index, unknown routes.

use mpanel_tests::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

async fn get(app: &TestApp, path: &str) -> (StatusCode, String, Value) {
    let r = app
        .http
        .get(format!("{}{path}", app.url))
        .send()
        .await
        .expect("request");
    let status = r.status();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn public_products_lists_the_tenants_active_catalog() {
    let app = TestApp::spawn().await;
    let (status, _, body) = get(&app, "/api/public/products?tenant=migrahosting").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tenant"]["slug"], "migrahosting");
    let products = body["products"].as_array().expect("products");
    assert_eq!(products.len(), 1);
    assert_eq!(products[0]["name"], "Starter Hosting");
    assert_eq!(
        products[0]["plan"],
        serde_json::json!(["dns", "hosting", "mail"])
    );
    assert_eq!(products[0]["prices"][0]["id"], app.price_id.to_string());
    assert_eq!(products[0]["prices"][0]["amountMinor"], 999);
    assert_eq!(products[0]["prices"][0]["currency"], "USD");

    for (path, status, field) in [
        (
            "/api/public/products",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tenant"),
        ),
        (
            "/api/public/products?tenant=Bad%20Slug",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tenant"),
        ),
        (
            "/api/public/products?tenant=..%2F..%2Fetc",
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tenant"),
        ),
        (
            "/api/public/products?tenant=nosuchtenant",
            StatusCode::NOT_FOUND,
            None,
        ),
    ] {
        let (got, content_type, body) = get(&app, path).await;
        assert_eq!(got, status, "{path}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        if let Some(field) = field {
            assert_eq!(body["errors"][0]["field"], field, "{path}");
        }
    }
}

#[tokio::test]
async fn health_readiness_and_liveness_answer() {
    let app = TestApp::spawn().await;
    let (status, _, body) = get(&app, "/api/live").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _, body) = get(&app, "/api/ready").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let (status, _, body) = get(&app, "/api/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["checks"]["postgres"]["status"], "ok");
    assert_eq!(body["checks"]["migrations"]["status"], "ok");
    assert!(body["checks"]["postgres"]["latencyMs"].as_f64().is_some());
    let (status, _, body) = get(&app, "/").await;
    assert_eq!(
        (status, body["name"].as_str()),
        (StatusCode::OK, Some("mpanel"))
    );

    // Readiness follows the migrations: roll one back by hand and it is 503.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&app.pool)
    .await
    .expect("forget a migration");
    let (status, content_type, body) = get(&app, "/api/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["type"], "urn:mpanel:problem:unavailable");
    let (status, _, body) = get(&app, "/api/health").await;
    assert_eq!(
        (status, body["checks"]["migrations"]["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("down"))
    );
    let (status, _, _) = get(&app, "/api/live").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "liveness does not depend on the database"
    );
}

#[tokio::test]
async fn unknown_routes_are_problem_json_404_and_responses_carry_security_headers() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(format!("{}/api/nope", app.url))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let h = r.headers();
    assert_eq!(h["content-type"], "application/problem+json");
    for header in [
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "content-security-policy",
        "strict-transport-security",
        "x-request-id",
    ] {
        assert!(h.contains_key(header), "missing {header}");
    }
}
