//! Staff API black-box: every endpoint × every role (allowed or 403), cross-tenant reads (404,
//! no leak), customers seeing only their own orders, the catalog as commands, the views, and
//! the order's event history.

use std::collections::HashMap;

use mpanel_adapters::auth::{create_user, Role, SecretString};
use mpanel_adapters::bus::CommandBus;
use mpanel_adapters::metadata::EventMetadata;
use mpanel_domain::ids;
use mpanel_domain::order::BillingInterval;
use mpanel_domain::product::{AddPrice, CreateProduct, ProductCommand};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::tenant::TenantCommand;
use mpanel_domain::values::{Currency, Email, Money, TenantSlug};
use mpanel_tests::reliability;
use mpanel_tests::{unique_domain, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

/// A second tenant with a product and price, registered through the command bus.
async fn other_tenant(app: &TestApp) -> (Uuid, Uuid, Uuid) {
    let bus = CommandBus::new(&app.pool);
    let meta = EventMetadata::new("test");
    let slug = TenantSlug::parse("otherhost").expect("slug");
    let tenant = ids::tenant_id(&slug);
    let now = chrono::Utc::now();
    bus.tenants
        .execute(
            tenant,
            TenantCommand::Register {
                slug,
                name: "Other Host".into(),
                at: now,
            },
            &meta,
        )
        .await
        .expect("tenant");
    let product = Uuid::new_v4();
    let price = Uuid::new_v4();
    bus.products
        .execute(
            product,
            ProductCommand::Create(CreateProduct {
                tenant_id: tenant,
                name: "Other Plan".into(),
                description: String::new(),
                plan: vec![ProvisioningStep::Dns],
                created_at: now,
            }),
            &meta,
        )
        .await
        .expect("product");
    bus.products
        .execute(
            product,
            ProductCommand::AddPrice(AddPrice {
                price_id: price,
                amount: Money::new(500, Currency::parse("EUR").expect("eur")).expect("money"),
                interval: BillingInterval::Year,
                added_at: now,
            }),
            &meta,
        )
        .await
        .expect("price");
    app.eventually(10, "other tenant's price projected", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM prices WHERE id = $1")
            .bind(price)
            .fetch_one(&app.pool)
            .await
            .expect("count");
        (n == 1).then_some(())
    })
    .await;
    (tenant, product, price)
}

async fn user(app: &TestApp, tenant: Option<Uuid>, email: &str, role: Role) {
    create_user(
        &app.pool,
        tenant,
        &Email::parse(email).expect("email"),
        role,
        &SecretString::from(PASSWORD.to_owned()),
    )
    .await
    .expect("create user");
}

async fn place(app: &TestApp, tenant: &str, price: Uuid, email: &str) -> Value {
    let body = json!({
        "tenantSlug": tenant,
        "priceId": price,
        "customerEmail": email,
        "stripePaymentIntentId": format!("pi_{}", Uuid::new_v4().simple()),
        "domain": unique_domain(),
    });
    let r = app.post_order(&body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.expect("order")
}

/// Waits until the order's subscription, every one of its jobs (the saga schedules them in
/// separate commits), its customer and its domain are projected.
async fn projected(app: &TestApp, order: &Value) {
    let id = order["orderId"].as_str().expect("orderId").to_owned();
    app.eventually(15, "order fully projected", || async {
        let (jobs_missing, subs, customers, domains): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(max(cardinality(required_steps)), -1) FROM subscriptions WHERE order_id = $1::uuid) \
                      - (SELECT count(*) FROM jobs WHERE order_id = $1::uuid), \
                    (SELECT count(*) FROM subscriptions WHERE order_id = $1::uuid), \
                    (SELECT count(*) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.id = $1::uuid), \
                    (SELECT count(*) FROM domains WHERE order_id = $1::uuid)",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .expect("counts");
        (jobs_missing == 0 && subs == 1 && customers == 1 && domains == 1).then_some(())
    })
    .await;
}

struct World {
    tokens: HashMap<&'static str, String>,
    order_a: Value,
    order_a2: Value,
    order_b: Value,
    product_a: Uuid,
    product_b: Uuid,
    customer_a: Uuid,
}

async fn world(app: &TestApp) -> World {
    let (tenant_b, product_b, price_b) = other_tenant(app).await;
    let tenant_a = ids::tenant_id(&TenantSlug::parse(&app.tenant).expect("slug"));
    let order_a = place(app, &app.tenant, app.price_id, "alice@example.com").await;
    let order_a2 = place(app, &app.tenant, app.price_id, "bob@example.com").await;
    let order_b = place(app, "otherhost", price_b, "carol@example.com").await;
    for o in [&order_a, &order_a2, &order_b] {
        projected(app, o).await;
    }
    user(app, None, "root@mpanel.test", Role::SuperAdmin).await;
    user(
        app,
        Some(tenant_a),
        "support@migrahosting.test",
        Role::Support,
    )
    .await;
    user(
        app,
        Some(tenant_a),
        "auditor@migrahosting.test",
        Role::Auditor,
    )
    .await;
    user(app, Some(tenant_a), "alice@example.com", Role::Customer).await;
    user(app, Some(tenant_b), "admin@otherhost.test", Role::Admin).await;
    let mut tokens = HashMap::new();
    tokens.insert("super_admin", app.login("root@mpanel.test", PASSWORD).await);
    tokens.insert("admin", app.admin_token().await);
    tokens.insert(
        "support",
        app.login("support@migrahosting.test", PASSWORD).await,
    );
    tokens.insert(
        "auditor",
        app.login("auditor@migrahosting.test", PASSWORD).await,
    );
    tokens.insert("customer", app.login("alice@example.com", PASSWORD).await);
    tokens.insert(
        "other_admin",
        app.login("admin@otherhost.test", PASSWORD).await,
    );
    let customer_a = ids::customer_id(tenant_a, &Email::parse("alice@example.com").expect("email"));
    World {
        tokens,
        order_a,
        order_a2,
        order_b,
        product_a: app.product_id,
        product_b,
        customer_a,
    }
}

/// Whether a concrete path (query ignored) fits an OpenAPI path template like `/api/jobs/{id}`.
fn matches_template(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} in {v}"))
        .to_owned()
}

#[tokio::test]
async fn every_endpoint_answers_each_role_as_the_role_table_says() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let order = s(&w.order_a, "orderId");
    let sub = s(&w.order_a, "subscriptionId");
    let job = w.order_a["jobIds"][0].as_str().expect("job").to_owned();
    let domain: String = sqlx::query_scalar("SELECT domain FROM orders WHERE id = $1::uuid")
        .bind(&order)
        .fetch_one(&app.pool)
        .await
        .expect("domain");
    let product = w.product_a;
    let customer = w.customer_a;
    // The subscription's opening: the order and its subscription both exist there.
    let placed_at: i64 = sqlx::query_scalar(
        "SELECT global_position FROM events WHERE aggregate_type = 'Subscription' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(&sub)
    .fetch_one(&app.pool)
    .await
    .expect("opening position");

    const ALL: &[&str] = &["super_admin", "admin", "support", "auditor", "customer"];
    const STAFF: &[&str] = &["super_admin", "admin", "support", "auditor"];
    const ADMINS: &[&str] = &["super_admin", "admin"];
    const RETRIERS: &[&str] = &["super_admin", "admin", "support"];
    const AUDITORS: &[&str] = &["super_admin", "auditor"];
    let new_product = json!({ "name": "Matrix Plan", "plan": ["dns"], "tenantSlug": app.tenant });
    let matrix: Vec<(Method, String, Option<Value>, &[&str])> = vec![
        (Method::GET, "/api/products".into(), None, STAFF),
        (
            Method::POST,
            "/api/products".into(),
            Some(new_product),
            ADMINS,
        ),
        (Method::GET, format!("/api/products/{product}"), None, STAFF),
        (
            Method::PATCH,
            format!("/api/products/{product}"),
            Some(json!({ "description": "Updated" })),
            ADMINS,
        ),
        (
            Method::POST,
            format!("/api/products/{product}/prices"),
            Some(json!({ "amountMinor": 1999, "currency": "USD", "interval": "year" })),
            ADMINS,
        ),
        (Method::GET, "/api/orders".into(), None, ALL),
        (Method::GET, format!("/api/orders/{order}"), None, ALL),
        (
            Method::GET,
            format!("/api/orders/{order}/events"),
            None,
            STAFF,
        ),
        (Method::GET, "/api/subscriptions".into(), None, ALL),
        (Method::GET, format!("/api/subscriptions/{sub}"), None, ALL),
        (Method::GET, "/api/jobs".into(), None, STAFF),
        (Method::GET, format!("/api/jobs/{job}"), None, STAFF),
        (
            Method::POST,
            format!("/api/jobs/{job}/retry"),
            None,
            RETRIERS,
        ),
        (Method::GET, "/api/customers".into(), None, STAFF),
        (
            Method::GET,
            format!("/api/customers/{customer}"),
            None,
            STAFF,
        ),
        (Method::GET, "/api/domains".into(), None, STAFF),
        (Method::GET, format!("/api/domains/{domain}"), None, STAFF),
        (Method::GET, "/api/auth/me".into(), None, ALL),
        (Method::GET, "/api/audit/verify".into(), None, AUDITORS),
        (Method::GET, "/api/audit/events".into(), None, AUDITORS),
        (
            Method::GET,
            format!("/api/orders/{order}?at={placed_at}"),
            None,
            ALL,
        ),
        (
            Method::GET,
            format!("/api/subscriptions/{sub}?at={placed_at}"),
            None,
            ALL,
        ),
        // Lifecycle: each allowed call starts the operation (202), finds it done or under way
        // (200) or refused by the subscription's status (409).
        (
            Method::POST,
            format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({ "reason": "matrix" })),
            RETRIERS,
        ),
        (
            Method::POST,
            format!("/api/subscriptions/{sub}/unsuspend"),
            None,
            RETRIERS,
        ),
        (
            Method::POST,
            format!("/api/subscriptions/{sub}/reprovision"),
            None,
            ADMINS,
        ),
        (
            Method::POST,
            format!("/api/orders/{order}/cancel"),
            Some(json!({ "reason": "matrix" })),
            ADMINS,
        ),
        (
            Method::POST,
            format!("/api/subscriptions/{sub}/terminate"),
            Some(json!({ "reason": "matrix" })),
            ADMINS,
        ),
        // Destructive rows last: archiving and deactivating converge (204 again), and logging
        // out revokes each caller's token after its own row.
        (
            Method::DELETE,
            format!("/api/products/{product}/prices/{}", app.price_id),
            None,
            ADMINS,
        ),
        (
            Method::DELETE,
            format!("/api/products/{product}"),
            None,
            ADMINS,
        ),
        (Method::POST, "/api/auth/logout".into(), None, ALL),
    ];
    // No endpoint escapes the table: every bearer-secured operation of the OpenAPI document
    // (generated from the router's own annotations) has a row.
    let doc: Value = app
        .http
        .get(format!("{}/api/openapi.json", app.url))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let mut secured = 0;
    for (template, operations) in doc["paths"].as_object().expect("paths") {
        for (verb, operation) in operations.as_object().expect("operations") {
            let bearer = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            if !bearer {
                continue;
            }
            secured += 1;
            let covered = matrix.iter().any(|(m, p, _, _)| {
                m.as_str().eq_ignore_ascii_case(verb) && matches_template(template, p)
            });
            assert!(covered, "{verb} {template} has no row in the role matrix");
        }
    }
    assert!(
        secured >= 20,
        "the document lists the staff endpoints ({secured})"
    );
    for (method, path, body, allowed) in &matrix {
        let (status, problem) = app.call(method.clone(), path, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token: {problem}"
        );
        for role in ALL {
            let (status, answer) = app
                .call(method.clone(), path, Some(&w.tokens[role]), body.clone())
                .await;
            if allowed.contains(role) {
                assert!(
                    status.is_success() || status == StatusCode::CONFLICT,
                    "{method} {path} as {role}: expected allowed, got {status} {answer}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} as {role}: {answer}"
                );
                assert_eq!(answer["type"], "urn:mpanel:problem:forbidden");
            }
        }
    }
}

#[tokio::test]
async fn another_tenants_resources_are_not_found_and_never_listed() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let other = &w.tokens["other_admin"];
    let order = s(&w.order_a, "orderId");
    let sub = s(&w.order_a, "subscriptionId");
    let job = w.order_a["jobIds"][0].as_str().expect("job").to_owned();
    let domain: String = sqlx::query_scalar("SELECT domain FROM orders WHERE id = $1::uuid")
        .bind(&order)
        .fetch_one(&app.pool)
        .await
        .expect("domain");
    for path in [
        format!("/api/orders/{order}"),
        format!("/api/orders/{order}/events"),
        format!("/api/subscriptions/{sub}"),
        format!("/api/jobs/{job}"),
        format!("/api/customers/{}", w.customer_a),
        format!("/api/domains/{domain}"),
        format!("/api/products/{}", w.product_a),
    ] {
        let (status, body) = app.call(Method::GET, &path, Some(other), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(!body.to_string().contains(&order), "no leak in {path}");
    }
    for (method, path, body) in [
        (Method::POST, format!("/api/jobs/{job}/retry"), None),
        (
            Method::POST,
            format!("/api/subscriptions/{sub}/suspend"),
            Some(json!({ "reason": "hostile" })),
        ),
        (
            Method::POST,
            format!("/api/subscriptions/{sub}/unsuspend"),
            None,
        ),
        (
            Method::POST,
            format!("/api/subscriptions/{sub}/terminate"),
            Some(json!({ "reason": "hostile" })),
        ),
        (
            Method::POST,
            format!("/api/subscriptions/{sub}/reprovision"),
            None,
        ),
        (
            Method::POST,
            format!("/api/orders/{order}/cancel"),
            Some(json!({ "reason": "hostile" })),
        ),
        (
            Method::PATCH,
            format!("/api/products/{}", w.product_a),
            Some(json!({ "name": "Hijacked" })),
        ),
        (
            Method::DELETE,
            format!("/api/products/{}", w.product_a),
            None,
        ),
    ] {
        let (status, answer) = app.call(method.clone(), &path, Some(other), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
    }
    // Lists show only the caller's tenant; a super admin sees both.
    let mine = s(&w.order_b, "orderId");
    for path in [
        "/api/orders",
        "/api/subscriptions",
        "/api/jobs",
        "/api/customers",
        "/api/domains",
        "/api/products",
    ] {
        let (status, body) = app.call(Method::GET, path, Some(other), None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let text = body.to_string();
        assert!(
            !text.contains(&order) && !text.contains(&w.customer_a.to_string()),
            "{path} leaks tenant A"
        );
        assert!(
            !text.contains(&w.product_a.to_string()),
            "{path} leaks tenant A's product"
        );
        assert!(
            body["total"].as_i64().is_some_and(|t| t >= 1),
            "{path} shows tenant B's own rows"
        );
    }
    let (_, all) = app
        .call(
            Method::GET,
            "/api/orders",
            Some(&w.tokens["super_admin"]),
            None,
        )
        .await;
    let text = all.to_string();
    assert!(text.contains(&order) && text.contains(&mine));
    let (_, theirs) = app
        .call(Method::GET, "/api/products", Some(other), None)
        .await;
    assert!(theirs.to_string().contains(&w.product_b.to_string()));
    reliability::attack(
        "Cross-tenant access: another tenant's orders, events, subscriptions, jobs, customers, domains and products read, changed or listed: 404, nothing leaked or written",
        file!(),
        "another_tenants_resources_are_not_found_and_never_listed",
        21,
    );
}

#[tokio::test]
async fn a_customer_sees_only_their_own_orders_and_subscriptions() {
    let app = TestApp::spawn().await;
    let w = world(&app).await;
    let alice = &w.tokens["customer"];
    let (status, list) = app
        .call(Method::GET, "/api/orders", Some(alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], w.order_a["orderId"]);
    let (_, subs) = app
        .call(Method::GET, "/api/subscriptions", Some(alice), None)
        .await;
    assert_eq!(subs["total"], 1);
    for path in [
        format!("/api/orders/{}", s(&w.order_a2, "orderId")),
        format!("/api/subscriptions/{}", s(&w.order_a2, "subscriptionId")),
    ] {
        let (status, _) = app.call(Method::GET, &path, Some(alice), None).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "bob's {path} is invisible to alice"
        );
    }
}

#[tokio::test]
async fn an_order_detail_embeds_its_subscription_and_jobs_and_its_history_is_in_order() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let order = place(&app, &app.tenant, app.price_id, "dora@example.com").await;
    projected(&app, &order).await;
    let id = s(&order, "orderId");
    let (status, detail) = app
        .call(
            Method::GET,
            &format!("/api/orders/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["id"], order["orderId"]);
    assert_eq!(detail["customerEmail"], "dora@example.com");
    assert_eq!(detail["subscription"]["id"], order["subscriptionId"]);
    assert_eq!(
        detail["subscription"]["requiredSteps"],
        json!(["dns", "hosting", "mail"])
    );
    assert_eq!(detail["jobs"].as_array().map(Vec::len), Some(3));

    let (status, history) = app
        .call(
            Method::GET,
            &format!("/api/orders/{id}/events"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = history.as_array().expect("events");
    assert_eq!(events[0]["eventType"], "OrderPlaced");
    assert_eq!(events[0]["actor"], "webhook");
    assert_eq!(events[1]["eventType"], "SubscriptionOpened");
    assert_eq!(events[1]["actor"], "saga");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["eventType"] == "JobScheduled")
            .count(),
        3
    );
    assert!(events.iter().all(|e| e["recordedAt"].is_string()));

    let (status, problem) = app
        .call(Method::GET, "/api/orders/not-a-uuid", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "id");
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/api/orders/{}", Uuid::new_v4()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, problem) = app
        .call(Method::GET, "/api/orders?perPage=1000", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "perPage");
}

#[tokio::test]
async fn the_catalog_is_managed_through_commands_and_reaches_the_public_catalog() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let before = app.count_events(None).await;
    for (body, field) in [
        (json!({ "plan": ["dns"] }), "name"),
        (json!({ "name": "", "plan": ["dns"] }), "name"),
        (json!({ "name": "X", "plan": ["ftp"] }), "plan"),
        (json!({ "name": "X", "plan": "dns" }), "plan"),
        (json!({ "name": "X" }), "plan"),
        (
            json!({ "name": "X", "plan": [], "tenantSlug": "otherhost" }),
            "tenantSlug",
        ),
    ] {
        let (status, problem) = app
            .call(
                Method::POST,
                "/api/products",
                Some(&admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            problem.to_string().contains(field),
            "{problem} names {field}"
        );
    }
    assert_eq!(
        app.count_events(None).await,
        before,
        "nothing written on bad input"
    );

    let (status, created) = app
        .call(
            Method::POST,
            "/api/products",
            Some(&admin),
            Some(
                json!({ "name": "Pro Hosting", "description": "More", "plan": ["hosting", "dns"] }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = s(&created, "id");
    assert_eq!(created["plan"], json!(["dns", "hosting"]));
    let (status, price) = app
        .call(
            Method::POST,
            &format!("/api/products/{id}/prices"),
            Some(&admin),
            Some(json!({ "amountMinor": 2499, "currency": "usd", "interval": "month" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(price["currency"], "USD");
    let price_id = s(&price, "id");
    for (body, field) in [
        (
            json!({ "amountMinor": -1, "currency": "USD", "interval": "month" }),
            "amountMinor",
        ),
        (
            json!({ "amountMinor": 1.5, "currency": "USD", "interval": "month" }),
            "amountMinor",
        ),
        (
            json!({ "amountMinor": 1, "currency": "US", "interval": "month" }),
            "currency",
        ),
        (
            json!({ "amountMinor": 1, "currency": "USD", "interval": "weekly" }),
            "interval",
        ),
    ] {
        let (status, problem) = app
            .call(
                Method::POST,
                &format!("/api/products/{id}/prices"),
                Some(&admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            problem.to_string().contains(field),
            "{problem} names {field}"
        );
    }

    let public = |app: &TestApp| {
        let url = format!("{}/api/public/products?tenant={}", app.url, app.tenant);
        let http = app.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .expect("public")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    app.eventually(10, "new product sold publicly", || async {
        public(&app)
            .await
            .to_string()
            .contains(&price_id)
            .then_some(())
    })
    .await;

    let (status, updated) = app
        .call(
            Method::PATCH,
            &format!("/api/products/{id}"),
            Some(&admin),
            Some(json!({ "name": "Pro Hosting 2" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["name"], "Pro Hosting 2");
    assert_eq!(updated["description"], "More");

    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/products/{id}/prices/{price_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.eventually(10, "deactivated price withdrawn", || async {
        (!public(&app).await.to_string().contains(&price_id)).then_some(())
    })
    .await;

    // Archiving: orders of the archived product's prices are refused; existing orders keep
    // their snapshot.
    let order = place(&app, &app.tenant, app.price_id, "erin@example.com").await;
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/products/{}", app.product_id),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/products/{}", app.product_id),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "archiving twice converges");
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/products/{}", app.product_id),
            Some(&admin),
            Some(json!({ "name": "Zombie" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    app.eventually(10, "archived product withdrawn", || async {
        (!public(&app)
            .await
            .to_string()
            .contains(&app.product_id.to_string()))
        .then_some(())
    })
    .await;
    let late = app
        .post_order(&app.order_body(
            &format!("pi_{}", Uuid::new_v4().simple()),
            "late@example.com",
            "late.example",
        ))
        .await;
    assert_eq!(late.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (status, detail) = app
        .call(
            Method::GET,
            &format!("/api/orders/{}", s(&order, "orderId")),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["productName"], "Starter Hosting");
    assert_eq!(detail["amountMinor"], 999);

    // Every change is an event with the admin as actor.
    let actors: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT metadata->>'actor' FROM events WHERE aggregate_type = 'Product' AND aggregate_id = $1",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .expect("actors");
    assert_eq!(actors.len(), 1);
    assert!(
        Uuid::parse_str(&actors[0]).is_ok(),
        "actor is the admin's user id"
    );
}
