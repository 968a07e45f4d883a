//! The seed's manual sequence, end to end, as an operator would walk it: health, the public
//! catalog, login as the seeded admin, `me`, a webhook order, and the admin then seeing that
//! order with its subscription and jobs. Login attempts land in the login audit.

use mpanel_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test]
async fn the_seeded_demo_can_be_walked_end_to_end() {
    let app = TestApp::spawn().await;
    let get = |path: &str, token: Option<&str>| {
        let mut r = app.http.get(format!("{}{path}", app.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    let health: Value = get("/api/health", None)
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let catalog: Value = get(&format!("/api/public/products?tenant={}", app.tenant), None)
        .await
        .expect("catalog")
        .json()
        .await
        .expect("json");
    let price = catalog["products"][0]["prices"][0]["id"]
        .as_str()
        .expect("a price")
        .to_owned();
    assert_eq!(price, app.price_id.to_string());

    let login = |password: String| {
        app.http
            .post(format!("{}/api/auth/login", app.url))
            .json(&json!({ "email": "admin@migrahosting.test", "password": password }))
            .send()
    };
    assert_eq!(
        login("not the password".into())
            .await
            .expect("login")
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let session: Value = login(app.admin_password.clone())
        .await
        .expect("login")
        .json()
        .await
        .expect("session");
    let token = session["accessToken"].as_str().expect("token").to_owned();
    let me: Value = get("/api/auth/me", Some(&token))
        .await
        .expect("me")
        .json()
        .await
        .expect("json");
    assert_eq!(me["email"], "admin@migrahosting.test");
    assert_eq!(me["role"], "admin");

    let body = app.order_body(
        &format!("pi_{}", Uuid::new_v4().simple()),
        "tour@example.com",
        "tour-example.com",
    );
    let placed = app.post_order(&body).await;
    assert_eq!(placed.status(), StatusCode::CREATED);
    let placed: Value = placed.json().await.expect("order");
    let order_id = placed["orderId"].as_str().expect("orderId").to_owned();

    let detail: Value = app
        .eventually(
            15,
            "the admin sees the order with its subscription and jobs",
            || async {
                let r = get(&format!("/api/orders/{order_id}"), Some(&token))
                    .await
                    .expect("order");
                if r.status() != StatusCode::OK {
                    return None;
                }
                let v: Value = r.json().await.expect("json");
                (v["subscription"].is_object()
                    && v["jobs"].as_array().is_some_and(|j| j.len() == 3))
                .then_some(v)
            },
        )
        .await;
    assert_eq!(detail["customerEmail"], "tour@example.com");
    assert_eq!(detail["subscription"]["id"], placed["subscriptionId"]);
    let orders: Value = get("/api/orders", Some(&token))
        .await
        .expect("orders")
        .json()
        .await
        .expect("json");
    assert!(orders["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|o| o["id"] == placed["orderId"]));
    let subscription: Value = get(
        &format!(
            "/api/subscriptions/{}",
            placed["subscriptionId"].as_str().expect("sub")
        ),
        Some(&token),
    )
    .await
    .expect("subscription")
    .json()
    .await
    .expect("json");
    assert_eq!(subscription["orderId"], placed["orderId"]);
    let job = placed["jobIds"][0].as_str().expect("job");
    assert_eq!(
        get(&format!("/api/jobs/{job}"), Some(&token))
            .await
            .expect("job")
            .status(),
        StatusCode::OK
    );

    // Both login attempts are in the audit, without any secret.
    let attempts: Vec<(String, bool)> =
        sqlx::query_as("SELECT email, succeeded FROM login_audit ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .expect("audit");
    assert_eq!(
        attempts,
        vec![
            ("admin@migrahosting.test".to_owned(), false),
            ("admin@migrahosting.test".to_owned(), true)
        ]
    );
    let dump: Vec<String> = sqlx::query_scalar("SELECT row_to_json(l)::text FROM login_audit l")
        .fetch_all(&app.pool)
        .await
        .expect("rows");
    assert!(dump.iter().all(|r| !r.contains(&app.admin_password)));
}
