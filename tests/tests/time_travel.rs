//! Time travel and the audit API, black-box: an order and its subscription as of any position
//! of the log; auditors verifying the hash chain (and finding tampering) and paging through the
//! sealed log, tenant-scoped.

use std::time::Duration;

use mpanel_adapters::auth::{create_user, Role, SecretString};
use mpanel_adapters::bus::CommandBus;
use mpanel_adapters::metadata::EventMetadata;
use mpanel_domain::ids;
use mpanel_domain::tenant::TenantCommand;
use mpanel_domain::values::{Email, TenantSlug};
use mpanel_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

async fn user(app: &TestApp, tenant: Option<Uuid>, email: &str, role: Role) -> String {
    create_user(
        &app.pool,
        tenant,
        &Email::parse(email).expect("email"),
        role,
        &SecretString::from(PASSWORD.to_owned()),
    )
    .await
    .expect("create user");
    app.login(email, PASSWORD).await
}

async fn get(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    app.call(Method::GET, path, Some(token), None).await
}

/// Places an order and waits until its subscription settled (ACTIVE with the order FULFILLED,
/// or PROVISIONING_FAILED), so no more events of it are coming.
async fn settled_order(app: &TestApp, token: &str) -> (String, String) {
    let suffix = &Uuid::new_v4().simple().to_string()[..10];
    let body = app.order_body(
        &format!("pi_{suffix}"),
        "jane@example.com",
        &format!("tt{suffix}.example.net"),
    );
    let r = app.post_order(&body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let placed: Value = r.json().await.expect("order");
    let order = placed["orderId"].as_str().expect("orderId").to_owned();
    let sub = placed["subscriptionId"]
        .as_str()
        .expect("subscriptionId")
        .to_owned();
    app.eventually(90, "the subscription settles", || async {
        let (_, s) = get(app, &format!("/api/subscriptions/{sub}"), token).await;
        let (_, o) = get(app, &format!("/api/orders/{order}"), token).await;
        match (s["status"].as_str(), o["status"].as_str()) {
            (Some("ACTIVE"), Some("FULFILLED")) | (Some("PROVISIONING_FAILED"), _) => Some(()),
            _ => None,
        }
    })
    .await;
    (order, sub)
}

async fn position(app: &TestApp, aggregate_type: &str, id: &str, sequence: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT global_position FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(aggregate_type)
    .bind(id)
    .bind(sequence)
    .fetch_one(&app.pool)
    .await
    .expect("position")
}

async fn head(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT global_position FROM events ORDER BY tx_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .expect("head")
}

fn without(mut v: Value, keys: &[&str]) -> Value {
    for k in keys {
        v.as_object_mut().expect("object").remove(*k);
    }
    v
}

#[tokio::test]
async fn an_order_and_its_subscription_are_shown_as_of_any_position() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (order, sub) = settled_order(&app, &admin).await;

    // At the OrderPlaced event: paid, no subscription yet.
    let placed = position(&app, "Order", &order, 1).await;
    let (status, view) = get(&app, &format!("/api/orders/{order}?at={placed}"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "PAID");
    assert_eq!(view["asOf"], placed);
    assert_eq!(view["id"], order.as_str());
    assert_eq!(view["subscriptionId"], sub.as_str());
    assert_eq!(view["customerEmail"], "jane@example.com");
    assert!(view["subscription"].is_null(), "{view}");
    assert!(view["fulfilledAt"].is_null());

    // At the subscription's opening: INACTIVE, nothing succeeded yet.
    let opened = position(&app, "Subscription", &sub, 1).await;
    let (status, view) = get(
        &app,
        &format!("/api/subscriptions/{sub}?at={opened}"),
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "INACTIVE");
    assert_eq!(view["asOf"], opened);
    assert_eq!(view["succeededSteps"], json!([]));
    assert!(!view["requiredSteps"].as_array().expect("steps").is_empty());
    assert!(view["activatedAt"].is_null());
    let (_, order_then) = get(&app, &format!("/api/orders/{order}?at={opened}"), &admin).await;
    assert_eq!(order_then["subscription"]["status"], "INACTIVE");

    // At the head: the same as the live views.
    let now = head(&app).await;
    let (_, live_order) = get(&app, &format!("/api/orders/{order}"), &admin).await;
    let (status, order_now) = get(&app, &format!("/api/orders/{order}?at={now}"), &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order_now["asOf"], now);
    assert_eq!(
        without(order_now.clone(), &["asOf", "subscription"]),
        without(live_order.clone(), &["subscription", "jobs"])
    );
    let (_, live_sub) = get(&app, &format!("/api/subscriptions/{sub}"), &admin).await;
    let (_, sub_now) = get(&app, &format!("/api/subscriptions/{sub}?at={now}"), &admin).await;
    assert!(
        ["ACTIVE", "PROVISIONING_FAILED"].contains(&sub_now["status"].as_str().expect("status"))
    );
    assert_eq!(without(sub_now.clone(), &["asOf"]), live_sub);
    assert_eq!(order_now["subscription"], live_sub);

    // Before the order existed: 404. Bad positions: 422.
    let (status, _) = get(
        &app,
        &format!("/api/orders/{order}?at={}", placed - 1),
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(
        &app,
        &format!("/api/subscriptions/{sub}?at={placed}"),
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for bad in ["abc", "0", "-3", "999999999"] {
        let (status, problem) = get(&app, &format!("/api/orders/{order}?at={bad}"), &admin).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "at={bad}");
        assert_eq!(problem["errors"][0]["field"], "at");
    }

    // The same tenant rules as the live view: another tenant's admin gets a 404.
    let other = register_tenant(&app, "othertt").await;
    let stranger = user(&app, Some(other), "admin@othertt.test", Role::Admin).await;
    let (status, _) = get(&app, &format!("/api/orders/{order}?at={now}"), &stranger).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn register_tenant(app: &TestApp, slug: &str) -> Uuid {
    let slug = TenantSlug::parse(slug).expect("slug");
    let tenant = ids::tenant_id(&slug);
    CommandBus::new(&app.pool)
        .tenants
        .execute(
            tenant,
            TenantCommand::Register {
                slug,
                name: "Other".into(),
                at: chrono::Utc::now(),
            },
            &EventMetadata::new("test"),
        )
        .await
        .expect("tenant");
    app.eventually(10, "tenant projected", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_one(&app.pool)
            .await
            .expect("count");
        (n == 1).then_some(())
    })
    .await;
    tenant
}

/// Pages through `/api/audit/events` with `limit`, following `next`.
async fn all_pages(app: &TestApp, token: &str, limit: usize) -> Vec<Value> {
    let mut items = vec![];
    let mut after = 0;
    loop {
        let (status, page) = get(
            app,
            &format!("/api/audit/events?after={after}&limit={limit}"),
            token,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let batch = page["items"].as_array().expect("items").clone();
        assert!(batch.len() <= limit);
        if batch.is_empty() {
            assert!(page["next"].is_null());
            return items;
        }
        assert_eq!(page["next"], batch.last().expect("last")["position"]);
        after = page["next"].as_i64().expect("next");
        items.extend(batch);
    }
}

#[tokio::test]
async fn auditors_verify_the_chain_page_through_the_log_and_see_tampering() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let tenant = ids::tenant_id(&TenantSlug::parse(&app.tenant).expect("slug"));
    let (order, _) = settled_order(&app, &admin).await;
    let other = register_tenant(&app, "otheraudit").await;
    let auditor = user(
        &app,
        Some(tenant),
        "auditor@migrahosting.test",
        Role::Auditor,
    )
    .await;
    let root = user(&app, None, "root@mpanel.test", Role::SuperAdmin).await;

    // Everything sealed: ok, no unsealed tail.
    let report = app
        .eventually(20, "the whole log sealed", || async {
            let (status, report) = get(&app, "/api/audit/verify", &auditor).await;
            assert_eq!(status, StatusCode::OK);
            (report["status"] == "ok" && report["unsealedTail"] == 0).then_some(report)
        })
        .await;
    let events = report["events"].as_i64().expect("events");
    assert_eq!(events, app.count_events(None).await);
    assert_eq!(report["headPosition"], head(&app).await);

    // The super admin pages through the whole chain: every sealed event once, in feed order,
    // each line chained to the one before.
    let everything = all_pages(&app, &root, 7).await;
    let feed: Vec<i64> = sqlx::query_scalar(
        "SELECT global_position FROM event_seals ORDER BY tx_id, global_position",
    )
    .fetch_all(&app.pool)
    .await
    .expect("seals");
    let positions: Vec<i64> = everything
        .iter()
        .map(|l| l["position"].as_i64().expect("position"))
        .collect();
    assert_eq!(positions, feed);
    for pair in everything.windows(2) {
        assert_eq!(pair[1]["prevHash"], pair[0]["hash"]);
    }
    assert_eq!(everything.last().expect("last")["hash"], report["headHash"]);

    // The tenant's auditor sees the tenant's sub-chain only.
    let own = all_pages(&app, &auditor, 1000).await;
    assert!(!own.is_empty() && own.len() < everything.len());
    let other_id = other.to_string();
    assert!(own.iter().all(|l| l["aggregateId"] != other_id.as_str()));
    assert!(everything
        .iter()
        .any(|l| l["aggregateId"] == other_id.as_str()));
    assert!(own.iter().any(|l| l["aggregateId"] == order.as_str()));

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=-1",
        "after=999999999",
    ] {
        let (status, problem) = get(&app, &format!("/api/audit/events?{bad}"), &root).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
    }
    let (_, first) = get(&app, "/api/audit/events", &root).await;
    assert_eq!(
        first["items"].as_array().expect("items").len(),
        everything.len().min(100)
    );

    // Tampering with a sealed event is reported, with its position (still a 200: a finding).
    let placed = position(&app, "Order", &order, 1).await;
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{OrderPlaced,customerEmail}', '\"mallory@example.com\"') \
         WHERE global_position = $1",
    )
    .bind(placed)
    .execute(&app.pool)
    .await
    .expect("tamper");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, report) = get(&app, "/api/audit/verify", &root).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["status"], "broken", "{report}");
    assert_eq!(report["position"], placed);
    assert_eq!(report["kind"], "changed");
}
