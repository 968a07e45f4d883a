//! `POST /api/orders` black-box: the real binary, the real Postgres.

use std::collections::HashSet;

use mpanel_adapters::bus::CommandBus;
use mpanel_adapters::metadata::EventMetadata;
use mpanel_domain::product::ProductCommand;
use mpanel_tests::reliability::{self, Tally};
use mpanel_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn pi() -> String {
    format!("pi_{}", Uuid::new_v4().simple())
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("JSON body")
}

#[tokio::test]
async fn a_paid_order_is_placed_and_the_saga_opens_its_subscription_and_jobs() {
    let app = TestApp::spawn().await;
    let payment = pi();
    let response = app
        .post_order(&app.order_body(&payment, "Jane@Example.COM", "Example.com"))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let body = json_of(response).await;
    let order_id = Uuid::parse_str(body["orderId"].as_str().expect("orderId")).expect("uuid");
    assert_eq!(location, format!("/api/orders/{order_id}"));
    assert_eq!(body["status"], "PAID");
    let job_ids: Vec<String> = body["jobIds"]
        .as_array()
        .expect("jobIds")
        .iter()
        .map(|j| j.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(job_ids.len(), 3, "dns, hosting, mail");

    // The saga opened the subscription INACTIVE and scheduled exactly the promised jobs.
    let subscription_id = body["subscriptionId"]
        .as_str()
        .expect("subscriptionId")
        .to_owned();
    // Workers run at once, so by the first read the jobs may have finished; what must hold is
    // that the subscription is never ACTIVE while a step is unfinished.
    let (status, required, succeeded): (String, Vec<String>, Vec<String>) = app
        .eventually(10, "subscription projected", || async {
            sqlx::query_as(
                "SELECT status, required_steps, succeeded_steps FROM subscriptions WHERE id = $1::uuid",
            )
            .bind(&subscription_id)
            .fetch_optional(&app.pool)
            .await
            .expect("query")
        })
        .await;
    assert_eq!(required, vec!["dns", "hosting", "mail"]);
    assert!(
        status == "INACTIVE" || (status == "ACTIVE" && succeeded.len() == required.len()),
        "never active before the work ran: {status} with {succeeded:?}"
    );
    let opened: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Subscription' AND aggregate_id = $1 ORDER BY sequence LIMIT 1",
    )
    .bind(&subscription_id)
    .fetch_all(&app.pool)
    .await
    .expect("events");
    assert_eq!(
        opened,
        vec!["SubscriptionOpened"],
        "opened INACTIVE, by its first event"
    );
    let jobs: Vec<(String, String)> = app
        .eventually(10, "three jobs projected", || async {
            let jobs: Vec<(String, String)> = sqlx::query_as(
                "SELECT id::text, status FROM jobs WHERE subscription_id = $1::uuid ORDER BY step",
            )
            .bind(&subscription_id)
            .fetch_all(&app.pool)
            .await
            .expect("query");
            (jobs.len() == 3).then_some(jobs)
        })
        .await;
    let projected: HashSet<String> = jobs.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(projected, job_ids.iter().cloned().collect::<HashSet<_>>());
    // Each promised job was scheduled exactly once (it may be running or done by now).
    let scheduled: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'JobScheduled' AND aggregate_id = ANY($1)",
    )
    .bind(&job_ids)
    .fetch_all(&app.pool)
    .await
    .expect("scheduled");
    assert_eq!(scheduled.len(), 3);
    assert_eq!(
        scheduled.into_iter().collect::<HashSet<_>>(),
        job_ids.iter().cloned().collect::<HashSet<_>>()
    );
    assert!(jobs.iter().all(|(_, s)| s != "DEAD_LETTERED"), "{jobs:?}");

    // Inputs were normalised at the edge.
    let (email, domain, order_status): (String, String, String) =
        sqlx::query_as("SELECT customer_email, domain, status FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&app.pool)
            .await
            .expect("order row");
    assert_eq!(
        (email.as_str(), domain.as_str()),
        ("jane@example.com", "example.com")
    );
    // The real provisioners may already have finished (tens of milliseconds on the loopback
    // servers), so the order may be fulfilled by now; it is never anything else.
    assert!(
        matches!(order_status.as_str(), "PAID" | "FULFILLED"),
        "{order_status}"
    );
    let customers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customers WHERE email = 'jane@example.com'")
            .fetch_one(&app.pool)
            .await
            .expect("customers");
    assert_eq!(customers, 1);

    // Metadata: who, and what caused what.
    let placed: (i64, Value) = sqlx::query_as(
        "SELECT global_position, metadata FROM events WHERE event_type = 'OrderPlaced'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("placed");
    assert_eq!(placed.1["actor"], "webhook");
    assert_eq!(placed.1["correlation_id"], order_id.to_string());
    let opened: Value =
        sqlx::query_scalar("SELECT metadata FROM events WHERE event_type = 'SubscriptionOpened'")
            .fetch_one(&app.pool)
            .await
            .expect("opened");
    assert_eq!(opened["actor"], "saga");
    assert_eq!(opened["causation_id"], placed.0.to_string());
    assert_eq!(opened["correlation_id"], order_id.to_string());
}

#[tokio::test]
async fn a_duplicate_webhook_answers_200_with_the_same_body_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let body = app.order_body(&pi(), "jane@example.com", "example.org");
    let first = app.post_order(&body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    let events = app.count_events(Some("OrderPlaced")).await;

    let again = app.post_order(&body).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.headers().contains_key("location"));
    assert_eq!(json_of(again).await, first);
    assert_eq!(app.count_events(Some("OrderPlaced")).await, events);

    // Differently cased but equal input is the same purchase.
    let mut recased = body.clone();
    recased["customerEmail"] = json!("JANE@example.com");
    recased["domain"] = json!("EXAMPLE.org");
    assert_eq!(app.post_order(&recased).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_same_payment_intent_for_something_else_is_a_conflict_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let payment = pi();
    assert_eq!(
        app.post_order(&app.order_body(&payment, "jane@example.com", "example.org"))
            .await
            .status(),
        StatusCode::CREATED
    );
    let before = app.count_events(None).await;
    for (email, domain) in [
        ("other@example.com", "example.org"),
        ("jane@example.com", "other.org"),
    ] {
        let r = app
            .post_order(&app.order_body(&payment, email, domain))
            .await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(json_of(r).await["type"], "urn:mpanel:problem:conflict");
    }
    // Let the saga settle, then compare: only the saga's own events were added.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.count_events(Some("OrderPlaced")).await, 1);
    // One order aggregate (its own later events, OrderFulfilled when provisioning is quick,
    // are the saga's).
    let orders: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Order'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(orders, 1);
    assert!(app.count_events(None).await >= before);
}

#[tokio::test]
async fn a_hundred_concurrent_identical_webhooks_make_exactly_one_order() {
    let app = TestApp::spawn().await;
    let body = app.order_body(&pi(), "rush@example.com", "rush.example");
    let requests = (0..100).map(|_| app.post_order(&body));
    let responses = futures::future::join_all(requests).await;
    let mut created = 0;
    let mut order_ids = HashSet::new();
    for r in responses {
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            other => panic!("unexpected status {other}"),
        }
        order_ids.insert(
            json_of(r).await["orderId"]
                .as_str()
                .expect("orderId")
                .to_owned(),
        );
    }
    assert_eq!(created, 1, "exactly one request created the order");
    assert_eq!(
        order_ids.len(),
        1,
        "every response carries the same orderId"
    );
    assert_eq!(app.count_events(Some("OrderPlaced")).await, 1);
    reliability::fault(
        "100 concurrent identical deliveries of one webhook: one order, every answer the same orderId",
        file!(),
        "a_hundred_concurrent_identical_webhooks_make_exactly_one_order",
        Tally {
            accepted: 1,
            ..Tally::default()
        },
    );
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_401_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let body = app.order_body(&pi(), "jane@example.com", "example.org");
    let before = app.count_events(None).await;
    let url = format!("{}/api/orders", app.url);
    let attempts = [
        app.http.post(&url).json(&body),
        app.http.post(&url).header("x-internal-key", "").json(&body),
        app.http
            .post(&url)
            .header("x-internal-key", "wrong")
            .json(&body),
        app.http
            .post(&url)
            .header("x-internal-key", format!("{}x", app.webhook_secret))
            .json(&body),
        app.http
            .post(&url)
            .header("x-internal-key", &app.webhook_secret[..10])
            .json(&body),
        app.http
            .post(&url)
            .header("authorization", format!("Bearer {}", app.webhook_secret))
            .json(&body),
    ];
    let tries = attempts.len();
    for attempt in attempts {
        let r = attempt.send().await.expect("request");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(json_of(r).await["type"], "urn:mpanel:problem:unauthorized");
    }
    assert_eq!(app.count_events(None).await, before);
    assert!(
        !app.log().contains(&app.webhook_secret),
        "the secret never reaches the log"
    );
    reliability::attack(
        "Webhook key missing, empty, wrong, truncated, extended or in the wrong header: 401 problem+json, nothing written, key never logged",
        file!(),
        "a_wrong_or_missing_key_is_401_and_writes_nothing",
        tries,
    );
}

async fn expect_field_error(app: &TestApp, r: reqwest::Response, status: StatusCode, field: &str) {
    assert_eq!(r.status(), status, "field {field}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem = json_of(r).await;
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        assert_eq!(problem["type"], "urn:mpanel:problem:validation");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["field"].as_str().expect("field"))
            .collect();
        assert!(fields.contains(&field), "{problem} should name {field}");
    }
    let _ = app;
}

#[tokio::test]
async fn bad_input_is_refused_field_by_field_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let before = app.count_events(None).await;
    let good = app.order_body(&pi(), "jane@example.com", "example.org");
    let with = |field: &str, value: Value| {
        let mut b = good.clone();
        b[field] = value;
        b
    };
    let without = |field: &str| {
        let mut b = good.clone();
        b.as_object_mut().expect("object").remove(field);
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with("customerEmail", json!("not-an-email")),
            "customerEmail",
        ),
        (with("customerEmail", json!("a@b")), "customerEmail"),
        (with("customerEmail", json!(42)), "customerEmail"),
        (with("domain", json!("exa mple.com")), "domain"),
        (with("domain", json!("example.com; rm -rf /")), "domain"),
        (with("domain", json!("../../etc/passwd")), "domain"),
        (with("domain", json!("example.com\u{0}")), "domain"),
        (
            with("domain", json!(format!("{}.com", "a".repeat(64)))),
            "domain",
        ),
        (with("domain", json!("p\u{0430}ypal.com")), "domain"),
        (with("tenantSlug", json!("Migra Hosting")), "tenantSlug"),
        (with("tenantSlug", json!("nosuchtenant")), "tenantSlug"),
        (with("priceId", json!("not-a-uuid")), "priceId"),
        (with("priceId", json!(Uuid::new_v4())), "priceId"),
        (
            with("stripePaymentIntentId", json!("pi 1; DROP TABLE events")),
            "stripePaymentIntentId",
        ),
        (without("customerEmail"), "customerEmail"),
        (without("stripePaymentIntentId"), "stripePaymentIntentId"),
        (without("domain"), "domain"),
        (json!([1, 2, 3]), "body"),
    ];
    let tries = cases.len() + 4; // and the four raw bodies below
    for (body, field) in cases {
        let r = app.post_order(&body).await;
        expect_field_error(&app, r, StatusCode::UNPROCESSABLE_ENTITY, field).await;
    }
    let url = format!("{}/api/orders", app.url);
    let raw = |content_type: &'static str, body: Vec<u8>| {
        app.http
            .post(&url)
            .header("x-internal-key", &app.webhook_secret)
            .header("content-type", content_type)
            .body(body)
    };
    let malformed = raw("application/json", b"{\"tenantSlug\": ".to_vec())
        .send()
        .await
        .expect("send");
    expect_field_error(&app, malformed, StatusCode::UNPROCESSABLE_ENTITY, "body").await;
    let nested = raw(
        "application/json",
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
    )
    .send()
    .await
    .expect("send");
    expect_field_error(&app, nested, StatusCode::UNPROCESSABLE_ENTITY, "body").await;
    let form = raw(
        "application/x-www-form-urlencoded",
        b"tenantSlug=migrahosting".to_vec(),
    )
    .send()
    .await
    .expect("send");
    expect_field_error(&app, form, StatusCode::UNSUPPORTED_MEDIA_TYPE, "").await;
    let huge = raw("application/json", vec![b' '; 200 * 1024])
        .send()
        .await
        .expect("send");
    expect_field_error(&app, huge, StatusCode::PAYLOAD_TOO_LARGE, "").await;

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        app.count_events(None).await,
        before,
        "nothing written on any error"
    );
    reliability::attack(
        "Hostile webhook input (SQL, shell and path-traversal strings, NUL, homoglyph domain, malformed JSON, 5000-deep nesting, form content type, 200 KiB body): 422/415/413 naming the field, nothing written",
        file!(),
        "bad_input_is_refused_field_by_field_and_writes_nothing",
        tries,
    );
}

#[tokio::test]
async fn an_inactive_price_is_refused_for_new_orders_but_duplicates_still_answer() {
    let app = TestApp::spawn().await;
    let earlier = app.order_body(&pi(), "early@example.com", "early.example");
    assert_eq!(app.post_order(&earlier).await.status(), StatusCode::CREATED);

    let bus = CommandBus::new(&app.pool);
    bus.products
        .execute(
            app.product_id,
            ProductCommand::DeactivatePrice {
                price_id: app.price_id,
                at: chrono::Utc::now(),
            },
            &EventMetadata::new("test"),
        )
        .await
        .expect("deactivate");
    app.eventually(10, "price deactivated in the catalog", || async {
        let active: bool = sqlx::query_scalar("SELECT active FROM prices WHERE id = $1")
            .bind(app.price_id)
            .fetch_one(&app.pool)
            .await
            .expect("price");
        (!active).then_some(())
    })
    .await;

    let before = app.count_events(Some("OrderPlaced")).await;
    let r = app
        .post_order(&app.order_body(&pi(), "late@example.com", "late.example"))
        .await;
    expect_field_error(&app, r, StatusCode::UNPROCESSABLE_ENTITY, "priceId").await;
    assert_eq!(
        app.post_order(&earlier).await.status(),
        StatusCode::OK,
        "a retry of an earlier order still answers"
    );
    assert_eq!(app.count_events(Some("OrderPlaced")).await, before);
}
