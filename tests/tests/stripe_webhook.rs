//! `POST /api/webhooks/stripe` black-box: signed deliveries to the real binary, the real
//! Postgres. Payloads are signed with the app's own helper, exactly as Stripe signs them.

use mpanel_adapters::http::stripe::sign;
use mpanel_tests::reliability;
use mpanel_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn pi() -> String {
    format!("pi_{}", Uuid::new_v4().simple())
}

fn evt() -> String {
    format!("evt_{}", Uuid::new_v4().simple())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A `payment_intent.succeeded` event as Stripe sends it (trimmed to what matters plus a few
/// fields we must tolerate).
fn intent_succeeded(app: &TestApp, event_id: &str, payment: &str, email: Value) -> Value {
    json!({
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": now(),
        "livemode": false,
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": payment,
                "object": "payment_intent",
                "amount": 999,
                "currency": "usd",
                "status": "succeeded",
                "receipt_email": email,
                "metadata": {
                    "tenantSlug": app.tenant,
                    "priceId": app.price_id.to_string(),
                    "domain": "stripe-example.org"
                }
            }
        }
    })
}

fn header(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// POSTs `body` with `signature` (no header for `None`).
async fn deliver(app: &TestApp, body: &[u8], signature: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}/api/webhooks/stripe", app.url))
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.expect("request")
}

/// Delivers `event` signed now with the app's secret.
async fn deliver_signed(app: &TestApp, event: &Value) -> reqwest::Response {
    let body = serde_json::to_vec(event).expect("serialise");
    let signature = header(&app.stripe_secret, now(), &body);
    deliver(app, &body, Some(&signature)).await
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("JSON body")
}

async fn stripe_events(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&app.pool)
        .await
        .expect("count stripe_events")
}

async fn placed_payments(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT payload->'OrderPlaced'->>'payment', metadata->>'actor' FROM events \
         WHERE event_type = 'OrderPlaced' ORDER BY global_position",
    )
    .fetch_all(&app.pool)
    .await
    .expect("placed orders")
}

#[tokio::test]
async fn a_signed_payment_places_one_order_and_replays_or_new_event_ids_add_nothing() {
    let app = TestApp::spawn().await;
    let payment = pi();
    let event_id = evt();
    let event = intent_succeeded(&app, &event_id, &payment, json!("Jane@Example.com"));

    let first = deliver_signed(&app, &event).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = json_of(first).await;
    assert_eq!(first["received"], true);
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["created"], true);
    assert_eq!(first["status"], "PAID");
    let order_id = first["orderId"].as_str().expect("orderId").to_owned();
    assert_eq!(first["jobIds"].as_array().expect("jobIds").len(), 3);
    assert_eq!(
        placed_payments(&app).await,
        vec![(payment.clone(), "stripe".to_owned())],
        "one OrderPlaced, the intent id as payment reference, actor stripe"
    );
    let customer_email: String =
        sqlx::query_scalar("SELECT payload->'OrderPlaced'->>'customerEmail' FROM events WHERE event_type = 'OrderPlaced'")
            .fetch_one(&app.pool)
            .await
            .expect("email");
    assert_eq!(
        customer_email, "jane@example.com",
        "receipt_email, normalised"
    );
    let recorded: (String, Option<Uuid>) =
        sqlx::query_as("SELECT event_type, order_id FROM stripe_events WHERE event_id = $1")
            .bind(&event_id)
            .fetch_one(&app.pool)
            .await
            .expect("recorded");
    assert_eq!(recorded.0, "payment_intent.succeeded");
    assert_eq!(recorded.1.map(|u| u.to_string()), Some(order_id.clone()));

    // The same event again (Stripe redelivers with a fresh signature): a duplicate, no intake.
    let events_before = app.count_events(None).await;
    let again = deliver_signed(&app, &event).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again = json_of(again).await;
    assert_eq!(again["received"], true);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["orderId"], order_id.as_str());
    assert_eq!(app.count_events(Some("OrderPlaced")).await, 1);
    assert_eq!(stripe_events(&app).await, 1);

    // The same intent under another event id: intake recognises the order.
    let other = intent_succeeded(&app, &evt(), &payment, json!("jane@example.com"));
    let other = deliver_signed(&app, &other).await;
    assert_eq!(other.status(), StatusCode::OK);
    let other = json_of(other).await;
    assert_eq!(other["duplicate"], false);
    assert_eq!(other["created"], false);
    assert_eq!(other["orderId"], order_id.as_str());
    assert_eq!(app.count_events(Some("OrderPlaced")).await, 1);
    assert_eq!(stripe_events(&app).await, 2);

    // Only the saga (reacting to the first delivery) may have written since.
    let by_stripe: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE metadata->>'actor' = 'stripe'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(by_stripe, 1);
    assert!(app.count_events(None).await >= events_before);
    assert!(!app.log().contains(&app.stripe_secret));
    reliability::attack(
        "Stripe event replayed (same event id re-signed), and the same intent under a new event id: no second order",
        file!(),
        "a_signed_payment_places_one_order_and_replays_or_new_event_ids_add_nothing",
        2,
    );
}

#[tokio::test]
async fn the_marketing_webhook_and_stripe_deliver_the_same_order_once() {
    let app = TestApp::spawn().await;
    let payment = pi();
    let via_site = app
        .post_order(&app.order_body(&payment, "jane@example.com", "stripe-example.org"))
        .await;
    assert_eq!(via_site.status(), StatusCode::CREATED);
    let via_site = json_of(via_site).await;
    let via_stripe = deliver_signed(
        &app,
        &intent_succeeded(&app, &evt(), &payment, json!("jane@example.com")),
    )
    .await;
    assert_eq!(via_stripe.status(), StatusCode::OK);
    let via_stripe = json_of(via_stripe).await;
    assert_eq!(via_stripe["created"], false);
    assert_eq!(via_stripe["orderId"], via_site["orderId"]);
    assert_eq!(app.count_events(Some("OrderPlaced")).await, 1);
}

#[tokio::test]
async fn forged_stale_or_unsigned_deliveries_are_400_and_write_nothing() {
    let app = TestApp::spawn().await;
    let event = intent_succeeded(&app, &evt(), &pi(), json!("jane@example.com"));
    let body = serde_json::to_vec(&event).expect("serialise");
    let t = now();
    let good = sign(&app.stripe_secret, t, &body);
    let mut tampered = event.clone();
    tampered["data"]["object"]["metadata"]["domain"] = json!("attacker.example");
    let tampered = serde_json::to_vec(&tampered).expect("serialise");

    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        (
            "stale",
            body.clone(),
            Some(header(&app.stripe_secret, t - 301, &body)),
        ),
        (
            "from the future",
            body.clone(),
            Some(header(&app.stripe_secret, t + 301, &body)),
        ),
        ("tampered body", tampered, Some(format!("t={t},v1={good}"))),
        (
            "another secret",
            body.clone(),
            Some(header("whsec_not_the_endpoint_secret", t, &body)),
        ),
        (
            "timestamp moved",
            body.clone(),
            Some(format!("t={},v1={good}", t - 1)),
        ),
        ("missing header", body.clone(), None),
        ("empty header", body.clone(), Some(String::new())),
        ("garbage", body.clone(), Some("garbage".to_owned())),
        ("no timestamp", body.clone(), Some(format!("v1={good}"))),
        ("no v1", body.clone(), Some(format!("t={t},v0={good}"))),
        (
            "bad timestamp",
            body.clone(),
            Some(format!("t=yesterday,v1={good}")),
        ),
        (
            "truncated v1",
            body.clone(),
            Some(format!("t={t},v1={}", &good[..63])),
        ),
    ];
    let tries = cases.len();
    for (what, body, signature) in cases {
        let r = deliver(&app, &body, signature.as_deref()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let problem = json_of(r).await;
        assert_eq!(
            problem["type"], "urn:mpanel:problem:invalid-signature",
            "{what}"
        );
        let detail = problem["detail"].as_str().expect("detail");
        assert!(
            !detail.contains(&good),
            "{what}: the signature is not echoed"
        );
    }
    assert_eq!(stripe_events(&app).await, 0);
    assert_eq!(app.count_events(Some("OrderPlaced")).await, 0);

    // A rolled secret: Stripe sends one v1 per active secret; any one match is enough.
    let rolled = sign("whsec_the_previous_secret_0000", t, &body);
    let several = format!("t={t},v1={rolled},v1={good},v0={rolled}");
    let r = deliver(&app, &body, Some(&several)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["created"], true);
    assert_eq!(app.count_events(Some("OrderPlaced")).await, 1);

    let log = app.log();
    assert!(
        !log.contains(&app.stripe_secret),
        "the secret never reaches the log"
    );
    assert!(!log.contains(&good), "nor a signature");
    assert!(!log.contains(&rolled));
    reliability::attack(
        "Stripe deliveries stale, from the future, with a tampered body, another secret's signature, a moved timestamp, or unsigned or garbled signatures: 400, nothing written, no secret or signature logged",
        file!(),
        "forged_stale_or_unsigned_deliveries_are_400_and_write_nothing",
        tries,
    );
}

#[tokio::test]
async fn other_event_types_are_acknowledged_recorded_and_ignored() {
    let app = TestApp::spawn().await;
    let before = app.count_events(None).await;
    let event_id = evt();
    let event = json!({
        "id": event_id,
        "object": "event",
        "type": "charge.refunded",
        "data": {"object": {"id": "ch_123", "object": "charge"}}
    });
    let r = deliver_signed(&app, &event).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await, json!({"received": true, "ignored": true}));
    let recorded: (String, Option<Uuid>) =
        sqlx::query_as("SELECT event_type, order_id FROM stripe_events WHERE event_id = $1")
            .bind(&event_id)
            .fetch_one(&app.pool)
            .await
            .expect("recorded");
    assert_eq!(recorded, ("charge.refunded".to_owned(), None));
    let again = deliver_signed(&app, &event).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        json_of(again).await,
        json!({"received": true, "duplicate": true})
    );
    assert_eq!(app.count_events(None).await, before);
}

async fn expect_field(r: reqwest::Response, field: &str) {
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{field}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem = json_of(r).await;
    assert_eq!(problem["type"], "urn:mpanel:problem:validation");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert!(fields.contains(&field), "{problem} should name {field}");
}

#[tokio::test]
async fn metadata_that_cannot_place_an_order_is_422_naming_the_field_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let before = app.count_events(None).await;

    // No receipt_email: the e-mail comes from the metadata, and is refused there.
    let mut bad_email = intent_succeeded(&app, &evt(), &pi(), Value::Null);
    bad_email["data"]["object"]["metadata"]["customerEmail"] = json!("not-an-email");
    expect_field(
        deliver_signed(&app, &bad_email).await,
        "metadata.customerEmail",
    )
    .await;
    let bad_receipt = intent_succeeded(&app, &evt(), &pi(), json!("a@b"));
    expect_field(deliver_signed(&app, &bad_receipt).await, "receipt_email").await;

    let with_metadata = |key: &str, value: Value| {
        let mut event = intent_succeeded(&app, &evt(), &pi(), json!("jane@example.com"));
        event["data"]["object"]["metadata"][key] = value;
        event
    };
    for (event, field) in [
        (
            with_metadata("tenantSlug", json!("Not A Slug")),
            "metadata.tenantSlug",
        ),
        (
            with_metadata("tenantSlug", json!("nosuchtenant")),
            "metadata.tenantSlug",
        ),
        (
            with_metadata("tenantSlug", Value::Null),
            "metadata.tenantSlug",
        ),
        (
            with_metadata("priceId", json!("not-a-uuid")),
            "metadata.priceId",
        ),
        (
            with_metadata("priceId", json!(Uuid::new_v4().to_string())),
            "metadata.priceId",
        ),
        (
            with_metadata("domain", json!("exa mple.com")),
            "metadata.domain",
        ),
        (with_metadata("domain", Value::Null), "metadata.domain"),
    ] {
        expect_field(deliver_signed(&app, &event).await, field).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.count_events(None).await, before, "no event written");
    assert_eq!(
        stripe_events(&app).await,
        0,
        "a refused event is not recorded, so a resend after a fix is handled"
    );

    // The metadata fallback places an order once the e-mail is right.
    let mut fixed = bad_email.clone();
    fixed["data"]["object"]["metadata"]["customerEmail"] = json!("jane@example.com");
    let r = deliver_signed(&app, &fixed).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["created"], true);
}

#[tokio::test]
async fn without_a_configured_secret_the_endpoint_is_503() {
    let app = TestApp::spawn_with(&[("STRIPE_WEBHOOK_SECRET", "")]).await;
    let r = deliver_signed(
        &app,
        &intent_succeeded(&app, &evt(), &pi(), json!("jane@example.com")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(app.count_events(Some("OrderPlaced")).await, 0);
}
