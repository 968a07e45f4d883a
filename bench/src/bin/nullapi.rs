//! `mpanel-nullapi`: the HTTP ceiling of the intake benchmark. It answers `POST /api/orders`
//! the way the webhook does on its fast path — reads the body, parses it as JSON, answers 201
//! with a body of the webhook's shape — but writes nothing anywhere.
//!
//! On a shared two-core machine the load generator, the API and Postgres compete for the same
//! CPU, so the HTTP exchange alone bounds what `intake_ratio_c16` can reach. `scripts/bench.sh`
//! measures this server with the same load generator and reports `http_ceiling_ops_c16`: how
//! many orders per second HTTP and JSON alone allow, before any order is decided or stored.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use serde_json::json;
use uuid::Uuid;

/// The same allocator as the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A webhook that only parses and answers.
#[derive(Parser, Debug)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:2293")]
    listen: SocketAddr,
}

/// Parses the order as JSON and answers with the fast path's body shape; 400 for anything
/// that is not a JSON object.
async fn order(body: axum::body::Bytes) -> (StatusCode, Json<serde_json::Value>) {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(fields)) => {
            let order_id = Uuid::new_v4();
            (
                StatusCode::CREATED,
                Json(json!({
                    "orderId": order_id,
                    "subscriptionId": Uuid::new_v4(),
                    "jobIds": [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()],
                    "status": "PAID",
                    "fields": fields.len(),
                })),
            )
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"detail": "the body is not a JSON object"})),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let app = Router::new().route("/api/orders", post(order));
    axum::serve(listener, app).await.context("serving")?;
    Ok(())
}
