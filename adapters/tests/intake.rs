//! The webhook's fast path places orders from a cached price, and the append's precondition
//! must refuse that cache as soon as the catalog read model differs from it in anything the
//! order records: the plan, the product's name, the amount, the price being sold. Each change
//! below is written straight into the read model (as the catalog projector would), and the
//! next order must carry the new catalog — or be refused — not the cached snapshot.

use chrono::Utc;
use mpanel_adapters::bus::CommandBus;
use mpanel_adapters::intake::{place_order, IntakeError, IntakeOutcome, OrderRequest};
use mpanel_adapters::metadata::EventMetadata;
use mpanel_domain::ids;
use mpanel_domain::values::{DomainName, Email, PaymentReference, TenantSlug};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const SLUG: &str = "cachehost";

/// A tenant with one product (three steps) and one sold price, as the catalog projector
/// writes them. Returns the price id.
async fn catalog(pool: &PgPool) -> Uuid {
    let tenant_id = ids::tenant_id(&TenantSlug::parse(SLUG).expect("slug"));
    let (product_id, price_id) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO tenants (id, slug, name, registered_at) VALUES ($1, $2, 'Cache Host', $3)",
    )
    .bind(tenant_id)
    .bind(SLUG)
    .bind(Utc::now())
    .execute(pool)
    .await
    .expect("tenant");
    sqlx::query(
        "INSERT INTO products (id, tenant_id, name, description, plan, archived, created_at, updated_at) \
         VALUES ($1, $2, 'Starter Hosting', '', '{dns,hosting,mail}', false, $3, $3)",
    )
    .bind(product_id)
    .bind(tenant_id)
    .bind(Utc::now())
    .execute(pool)
    .await
    .expect("product");
    sqlx::query(
        "INSERT INTO prices (id, product_id, tenant_id, amount_minor, currency, interval, active, added_at) \
         VALUES ($1, $2, $3, 999, 'USD', 'month', true, $4)",
    )
    .bind(price_id)
    .bind(product_id)
    .bind(tenant_id)
    .bind(Utc::now())
    .execute(pool)
    .await
    .expect("price");
    price_id
}

fn request(price_id: Uuid, n: u32) -> OrderRequest {
    OrderRequest {
        tenant: TenantSlug::parse(SLUG).expect("slug"),
        price_id,
        customer_email: Email::parse(&format!("c{n}@example.com")).expect("email"),
        payment: PaymentReference::parse(&format!("pi_cache_{n}")).expect("payment"),
        domain: Some(DomainName::parse(&format!("cache{n}.example")).expect("domain")),
    }
}

async fn place(
    pool: &PgPool,
    bus: &CommandBus,
    price_id: Uuid,
    n: u32,
) -> Result<IntakeOutcome, IntakeError> {
    place_order(pool, bus, request(price_id, n), EventMetadata::new("test")).await
}

/// The price snapshot recorded in order `n`'s `OrderPlaced`.
async fn recorded_price(pool: &PgPool, bus: &CommandBus, price_id: Uuid, n: u32) -> Value {
    let order_id = match place(pool, bus, price_id, n).await {
        Ok(IntakeOutcome::Created(placed)) => placed.order_id,
        other => panic!("order {n} was not created: {other:?}"),
    };
    sqlx::query_scalar(
        "SELECT payload->'OrderPlaced'->'price' FROM events \
         WHERE aggregate_type = 'Order' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(order_id.to_string())
    .fetch_one(pool)
    .await
    .expect("OrderPlaced")
}

async fn change(pool: &PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .expect("catalog change");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_cached_price_never_outlives_a_catalog_change(pool: PgPool) {
    let bus = CommandBus::new(&pool);
    let price_id = catalog(&pool).await;

    let first = recorded_price(&pool, &bus, price_id, 1).await;
    assert_eq!(first["steps"], json!(["dns", "hosting", "mail"]));
    assert_eq!(first["productName"], "Starter Hosting");

    // After each change the first order meets a stale cache entry, which the precondition
    // must refuse (the order then takes the ordinary path and drops the entry); the second
    // order fills the cache again from the read model, ready for the next change.
    change(&pool, "UPDATE products SET plan = '{dns}'").await;
    for n in [2, 3] {
        assert_eq!(
            recorded_price(&pool, &bus, price_id, n).await["steps"],
            json!(["dns"])
        );
    }
    change(&pool, "UPDATE products SET name = 'Renamed Hosting'").await;
    for n in [4, 5] {
        assert_eq!(
            recorded_price(&pool, &bus, price_id, n).await["productName"],
            "Renamed Hosting"
        );
    }
    change(&pool, "UPDATE prices SET amount_minor = 1999").await;
    for n in [6, 7] {
        assert_eq!(
            recorded_price(&pool, &bus, price_id, n).await["amount"]["amountMinor"],
            1999
        );
    }
    change(&pool, "UPDATE prices SET active = false").await;
    assert!(matches!(
        place(&pool, &bus, price_id, 8).await,
        Err(IntakeError::InactivePrice)
    ));
    let orders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Order' AND event_type = 'OrderPlaced'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(orders, 7, "the refused order wrote nothing");
    // A payment already placed is still the same order (a duplicate), though its price is no
    // longer sold.
    assert!(matches!(
        place(&pool, &bus, price_id, 1).await,
        Ok(IntakeOutcome::Duplicate(_))
    ));
}
