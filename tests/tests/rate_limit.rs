//! Rate limits black-box (DESIGN §5): an anonymous client is limited by address and answered
//! 429 problem+json with `Retry-After`; a bad credential is charged to the address; a valid
//! webhook key or staff token has its own budget, so a flood from one address does not starve
//! the marketing site's paid orders, nor staff, nor load-balancer probes.

use mpanel_adapters::auth::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use mpanel_tests::reliability;
use mpanel_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const LIMITS: &[(&str, &str)] = &[
    ("RATE_LIMIT_MAX_REQUESTS", "5"),
    ("RATE_LIMIT_WINDOW_MS", "60000"),
];

async fn public_products(app: &TestApp) -> reqwest::Response {
    app.http
        .get(format!(
            "{}/api/public/products?tenant={}",
            app.url, app.tenant
        ))
        .send()
        .await
        .expect("request")
}

async fn order_with_key(app: &TestApp, key: &str) -> reqwest::Response {
    let body = app.order_body(
        &format!("pi_{}", Uuid::new_v4().simple()),
        "buyer@example.com",
        "example.com",
    );
    app.http
        .post(format!("{}/api/orders", app.url))
        .header("x-internal-key", key)
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn staff_get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.http
        .get(format!("{}{path}", app.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

/// A well-formed access token signed with the wrong key.
fn forged_token() -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "sub": Uuid::new_v4(), "role": "super_admin", "sid": Uuid::new_v4(),
        "iss": "mpanel", "aud": "mpanel-api", "iat": now, "nbf": now, "exp": now + 600,
        "jti": Uuid::new_v4(),
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"not-the-server-secret-not-the-server-secret"),
    )
    .expect("sign")
}

async fn assert_limited(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/problem+json"),
        "{what}"
    );
    let retry_after: u64 = header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: Retry-After in whole seconds"));
    // 5 per 60 s refills one request every 12 s.
    assert!((1..=12).contains(&retry_after), "{what}: {retry_after}");
    let body: Value = r.json().await.expect("problem body");
    assert_eq!(body["type"], "urn:mpanel:problem:rate-limited", "{what}");
    assert_eq!(body["status"], 429, "{what}");
}

#[tokio::test]
async fn a_flood_from_one_client_does_not_starve_credentialed_callers() {
    let app = TestApp::spawn_with(LIMITS).await;

    // 1 of 5: staff log in from this address (login is anonymous, charged to the address).
    let token = app.admin_token().await;

    // 2..3 of 5: bad webhook keys are refused and charged to the address.
    for _ in 0..2 {
        let r = order_with_key(&app, "definitely-not-the-webhook-secret").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // 4 of 5: a forged token is refused and charged to the address too.
    let r = staff_get(&app, &forged_token(), "/api/products").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // 5 of 5.
    assert_eq!(public_products(&app).await.status(), StatusCode::OK);

    // The 6th anonymous request from this address is refused, however it is dressed.
    assert_limited(public_products(&app).await, "public catalog").await;
    assert_limited(
        order_with_key(&app, "definitely-not-the-webhook-secret").await,
        "bad webhook key",
    )
    .await;
    assert_limited(
        staff_get(&app, &forged_token(), "/api/products").await,
        "forged token",
    )
    .await;
    assert_limited(
        app.http
            .get(format!("{}/api/openapi.json", app.url))
            .send()
            .await
            .expect("request"),
        "openapi document",
    )
    .await;

    // Meanwhile the marketing site, from the same address, keeps placing paid orders...
    for i in 0..20 {
        let r = order_with_key(&app, &app.webhook_secret).await;
        assert_eq!(r.status(), StatusCode::CREATED, "order {i}");
    }
    // ...staff keep working with their valid token...
    for i in 0..10 {
        let r = staff_get(&app, &token, "/api/orders").await;
        assert_eq!(r.status(), StatusCode::OK, "staff request {i}");
    }
    // ...and probes are never limited.
    for path in ["/api/live", "/api/ready", "/api/health"] {
        let r = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // The anonymous budget is still spent.
    assert_limited(public_products(&app).await, "public catalog, later").await;
    reliability::attack(
        "Rate-limit flood from one client (bad keys, forged tokens, anonymous requests): 429 with Retry-After for it, while the webhook key, staff tokens and probes keep being served",
        file!(),
        "a_flood_from_one_client_does_not_starve_credentialed_callers",
        8,
    );
}

#[tokio::test]
async fn a_credential_has_its_own_budget_too() {
    let app = TestApp::spawn_with(&[
        ("RATE_LIMIT_MAX_REQUESTS", "5"),
        ("RATE_LIMIT_WINDOW_MS", "60000"),
        ("RATE_LIMIT_CREDENTIAL_MAX_REQUESTS", "3"),
    ])
    .await;
    for i in 0..3 {
        let r = order_with_key(&app, &app.webhook_secret).await;
        assert_eq!(r.status(), StatusCode::CREATED, "order {i}");
    }
    let r = order_with_key(&app, &app.webhook_secret).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    // Spending the key's budget did not touch the address's.
    assert_eq!(public_products(&app).await.status(), StatusCode::OK);
}
