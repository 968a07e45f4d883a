//! What every mpanel connection brings to Postgres (ADR 0020).

use mpanel_adapters::config;
use secrecy::SecretString;
use sqlx::PgPool;

async fn jit(pool: &PgPool) -> String {
    sqlx::query_scalar("SHOW jit")
        .fetch_one(pool)
        .await
        .expect("show jit")
}

/// JIT compiled the feed-status query for ~300 ms per call; mpanel's pools must not use it,
/// whatever the server's default, including pools built from the pool's options (rebuilds).
#[tokio::test]
async fn connections_run_without_jit() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test.sh sets it)");
    let pool = config::connect(&SecretString::from(url), 2)
        .await
        .expect("connect");
    assert_eq!(jit(&pool).await, "off");
    let derived = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("derived pool");
    assert_eq!(jit(&derived).await, "off");
}
