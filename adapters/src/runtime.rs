//! Wiring a running mpanel: the pool, the command bus, the feed runners and the saga, the
//! provisioning worker and sweeper, and the HTTP server — with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use mpanel_domain::saga::SagaPolicy;
use mpanel_projections::runner::{self, RunnerConfig, Subscriber};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::CommandBus;
use crate::config::Config;
use crate::http::{router, AppState};
use crate::queue::{JobQueue, QueueError};
use crate::saga::SagaRunner;
use crate::worker::{sweep, ProvisionerSet, Worker, WorkerConfig};

/// Every feed subscriber of the process: the projectors and the saga.
#[must_use]
pub fn subscribers(
    bus: &Arc<CommandBus>,
    policy: SagaPolicy,
    doorbell: Option<JobQueue>,
) -> Vec<Subscriber> {
    let mut all = mpanel_projections::projectors::all();
    all.push(Subscriber::Reactor(Arc::new(SagaRunner::new(
        bus.clone(),
        policy,
        doorbell,
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
    /// Redis could not be reached at start.
    #[error("connecting to Redis: {0}")]
    Redis(#[from] QueueError),
    /// The listen address is taken or not allowed.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The server failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Runs API + feed runners + saga + worker + sweeper until `shutdown` resolves; then stops
/// taking requests and jobs, drains in-flight requests, lets running jobs record their outcome,
/// and stops the runners.
///
/// # Errors
/// [`ServeError`].
pub async fn serve(
    config: Config,
    provisioners: ProvisionerSet,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let pool = crate::config::connect(&config.database_url, config.database_pool_max).await?;
    let queue =
        JobQueue::connect(config.redis_url.expose_secret(), &config.redis_key_prefix).await?;
    let bus = Arc::new(CommandBus::new(&pool));
    let (stop_tx, stop_rx) = watch::channel(false);
    let policy = SagaPolicy {
        max_attempts: config.job_max_attempts,
    };
    let mut tasks = spawn_runners(
        &pool,
        subscribers(&bus, policy, Some(queue.clone())),
        &stop_rx,
    );
    let worker = Worker::new(
        bus.clone(),
        queue.clone(),
        provisioners,
        WorkerConfig {
            concurrency: config.worker.concurrency,
            lease: config.worker.lease,
            backoff_base: config.worker.backoff_base,
            backoff_cap: config.worker.backoff_cap,
            ..WorkerConfig::default()
        },
    );
    tasks.push(tokio::spawn(worker.run(stop_rx.clone())));
    tasks.push(tokio::spawn(sweep(
        pool.clone(),
        queue.clone(),
        config.worker.sweep_interval,
        config.worker.lease.min(std::time::Duration::from_secs(10)),
        stop_rx.clone(),
    )));

    let state = AppState::new(pool.clone(), bus, &config.marketing_webhook_secret)
        .with_queue(queue.clone())
        .with_auth(crate::auth::AuthSettings::from_config(&config))
        .with_rate_limit(&config.rate_limit)
        .with_cors_origins(&config.cors_allowed_origins);
    let state = match &config.stripe_webhook_secret {
        Some(secret) => state.with_stripe_secret(secret),
        None => state,
    };
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Bind(addr, e))?;
    tracing::info!(%addr, "mpanel serving");
    let served = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(ServeError::Serve);
    tracing::info!("shutting down: stopping worker, sweeper and feed runners");
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    queue.quit().await;
    pool.close().await;
    served
}
