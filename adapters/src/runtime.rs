//! Wiring a running mpanel: the pool, the command bus, the feed runners and the HTTP server,
//! with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use mpanel_domain::saga::SagaPolicy;
use mpanel_projections::runner::{self, RunnerConfig, Subscriber};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::CommandBus;
use crate::config::Config;
use crate::http::{router, AppState};
use crate::saga::SagaRunner;

/// Every feed subscriber of the process: the projectors and the saga.
#[must_use]
pub fn subscribers(bus: &Arc<CommandBus>, policy: SagaPolicy) -> Vec<Subscriber> {
    let mut all = mpanel_projections::projectors::all();
    all.push(Subscriber::Reactor(Arc::new(SagaRunner::new(
        bus.clone(),
        policy,
    ))));
    all
}

/// Starts one runner per subscriber; each stands by while another process leads it.
#[must_use]
pub fn spawn_runners(
    pool: &PgPool,
    subscribers: Vec<Subscriber>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    subscribers
        .into_iter()
        .map(|s| {
            tokio::spawn(runner::run(
                pool.clone(),
                s,
                RunnerConfig::default(),
                shutdown.clone(),
            ))
        })
        .collect()
}

/// Why serving stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be reached at start.
    #[error("connecting to Postgres: {0}")]
    Database(#[from] sqlx::Error),
    /// The listen address is taken or not allowed.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The server failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Runs API + feed runners + saga until `shutdown` resolves, then drains in-flight requests and
/// stops the runners.
///
/// # Errors
/// [`ServeError`].
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let pool = crate::config::connect(&config.database_url, config.database_pool_max).await?;
    let bus = Arc::new(CommandBus::new(&pool));
    let (stop_tx, stop_rx) = watch::channel(false);
    let policy = SagaPolicy {
        max_attempts: config.job_max_attempts,
    };
    let runners = spawn_runners(&pool, subscribers(&bus, policy), &stop_rx);

    let state = AppState::new(pool.clone(), bus, &config.marketing_webhook_secret);
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Bind(addr, e))?;
    tracing::info!(%addr, "mpanel serving");
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve);
    tracing::info!("shutting down: stopping feed runners");
    let _ = stop_tx.send(true);
    for r in runners {
        let _ = r.await;
    }
    pool.close().await;
    served
}
