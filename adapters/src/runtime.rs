//! Wiring a running mpanel: the pool, the command bus, the feed runners and the saga, the
//! provisioning worker and sweeper, and the HTTP server — with graceful shutdown.

use std::future::IntoFuture;
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

/// Which parts of mpanel one process runs. `serve` runs all of them; `api`, `worker` and
/// `runners` one each. Any number of processes of each kind may run against the same Postgres
/// and Redis: runners elect one leader per subscriber (advisory locks), workers take leases on
/// jobs, and the API is stateless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    /// The HTTP API (with `/metrics`).
    pub api: bool,
    /// The provisioning worker and the due-job sweeper.
    pub worker: bool,
    /// The feed runners: every projector, the audit sealer and the saga.
    pub runners: bool,
}

impl Components {
    /// Everything (`mpanel serve`).
    pub const ALL: Self = Self {
        api: true,
        worker: true,
        runners: true,
    };
    /// The HTTP API only (`mpanel api`).
    pub const API: Self = Self {
        api: true,
        worker: false,
        runners: false,
    };
    /// Worker and sweeper only (`mpanel worker`).
    pub const WORKER: Self = Self {
        api: false,
        worker: true,
        runners: false,
    };
    /// Feed runners and saga only (`mpanel runners`).
    pub const RUNNERS: Self = Self {
        api: false,
        worker: false,
        runners: true,
    };

    /// The role's name, for logs.
    #[must_use]
    pub fn role(self) -> &'static str {
        match self {
            Self::ALL => "serve",
            Self::API => "api",
            Self::WORKER => "worker",
            Self::RUNNERS => "runners",
            _ => "custom",
        }
    }
}

/// How a process stopped after its shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Requests drained, jobs in hand recorded, runners stopped.
    Clean,
    /// `SHUTDOWN_TIMEOUT_SECS` passed first; the caller should exit at once (blocking tasks,
    /// e.g. an SSH session, may still be running). Unrecorded jobs keep their lease until it
    /// expires; the sweeper then re-dispatches them.
    TimedOut,
}

/// Runs API + feed runners + saga + worker + sweeper until `shutdown` resolves (`mpanel
/// serve`); see [`run`].
///
/// # Errors
/// [`ServeError`].
pub async fn serve(
    config: Config,
    provisioners: ProvisionerSet,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run(config, Components::ALL, provisioners, shutdown)
        .await
        .map(drop)
}

/// Runs `components` until `shutdown` resolves; then, within `SHUTDOWN_TIMEOUT_SECS`, stops
/// accepting connections and drains in-flight requests, stops taking jobs and lets running ones
/// record their outcome, and stops the feed runners (a runner finishes the event in hand; its
/// advisory lock goes with its connection, so a standby elsewhere takes over).
///
/// Every role installs the metrics recorder and refreshes the shared gauges; the API serves
/// `/metrics` on `PORT`, other roles on `METRICS_PORT` when it is set.
///
/// # Errors
/// [`ServeError`] when a dependency is unreachable at start, the port is taken, or the server
/// fails.
pub async fn run(
    config: Config,
    components: Components,
    provisioners: ProvisionerSet,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Stopped, ServeError> {
    let role = components.role();
    // Listen for the signal from the start (a SIGTERM during start-up must not kill abruptly).
    let (signal_tx, mut signal_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = signal_tx.send(true);
    });
    crate::metrics::install();
    let subscribers = mpanel_projections::projectors::all().len() + 1;
    let pool_max = pool_size(components, config.database_pool_max, subscribers);
    if pool_max > config.database_pool_max {
        tracing::warn!(
            role,
            configured = config.database_pool_max,
            using = pool_max,
            "DATABASE_POOL_MAX is too small for the feed runners (each leading runner keeps one \
             pooled connection for LISTEN and needs another for its batches); raising it"
        );
    }
    let pool = crate::config::connect(&config.database_url, pool_max).await?;
    let queue =
        JobQueue::connect(config.redis_url.expose_secret(), &config.redis_key_prefix).await?;
    let bus = Arc::new(CommandBus::new(&pool));

    let listener = if components.api {
        Some(bind(SocketAddr::new(config.host, config.port)).await?)
    } else if let Some(port) = config.process.metrics_port {
        Some(bind(SocketAddr::new(config.host, port)).await?)
    } else {
        None
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if components.runners {
        let policy = SagaPolicy {
            max_attempts: config.job_max_attempts,
        };
        let saga =
            SagaRunner::new(bus.clone(), policy, Some(queue.clone())).with_event_log(pool.clone());
        let mut all = mpanel_projections::projectors::all();
        all.push(Subscriber::Reactor(Arc::new(saga)));
        tasks.extend(spawn_runners(&pool, all, &stop_rx));
    }
    if components.worker {
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
            config.worker.lease,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::metrics::collect(
        pool.clone(),
        Some(queue.clone()),
        config.process.metrics_refresh,
        stop_rx.clone(),
    )));

    let mut http = listener.map(|listener| {
        let app = if components.api {
            let state = AppState::new(pool.clone(), bus.clone(), &config.marketing_webhook_secret)
                .with_queue(queue.clone())
                .with_auth(crate::auth::AuthSettings::from_config(&config))
                .with_rate_limit(&config.rate_limit)
                .with_cors_origins(&config.cors_allowed_origins)
                .with_ready_max_feed_lag(config.process.ready_max_feed_lag_events);
            let state = match &config.stripe_webhook_secret {
                Some(secret) => state.with_stripe_secret(secret),
                None => state,
            };
            router(state)
        } else {
            crate::metrics::router()
        };
        let addr = listener.local_addr().ok();
        tracing::info!(role, addr = ?addr, api = components.api, "mpanel serving");
        let mut signalled = signal_rx.clone();
        tokio::spawn(
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = signalled.wait_for(|s| *s).await;
            })
            .into_future(),
        )
    });
    if http.is_none() {
        tracing::info!(
            role,
            "mpanel running (no HTTP listener; set METRICS_PORT for /metrics)"
        );
    }

    // Until the signal, or until the server fails on its own.
    let signal_seen = signal_rx.clone();
    let failed = tokio::select! {
        _ = signal_rx.wait_for(|s| *s) => None,
        ended = async {
            match http.as_mut() {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        } => {
            http = None;
            match ended {
                // It drained because the signal came (both branches were ready at once).
                Ok(Ok(())) if *signal_seen.borrow() => None,
                Ok(Ok(())) => Some(std::io::Error::other("the server stopped unexpectedly")),
                Ok(Err(e)) => Some(e),
                Err(e) => Some(std::io::Error::other(e)),
            }
        }
    };

    let timeout = config.process.shutdown_timeout;
    tracing::info!(
        role,
        timeout_secs = timeout.as_secs(),
        "shutting down: draining requests, stopping worker, sweeper and feed runners"
    );
    let _ = stop_tx.send(true);
    let drain = async {
        let served = match http {
            Some(handle) => match handle.await {
                Ok(result) => result,
                Err(e) => Err(std::io::Error::other(e)),
            },
            None => Ok(()),
        };
        for task in tasks {
            let _ = task.await;
        }
        served
    };
    let (stopped, served) = match tokio::time::timeout(timeout, drain).await {
        Ok(served) => (Stopped::Clean, served),
        Err(_) => {
            tracing::warn!(
                role,
                timeout_secs = timeout.as_secs(),
                "graceful shutdown did not finish in time; exiting anyway (unrecorded jobs are \
                 re-dispatched when their lease expires)"
            );
            (Stopped::TimedOut, Ok(()))
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), queue.quit()).await;
    if stopped == Stopped::Clean {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), pool.close()).await;
        tracing::info!(role, "shutdown complete");
    }
    if let Some(e) = failed {
        return Err(ServeError::Serve(e));
    }
    served.map_err(ServeError::Serve)?;
    Ok(stopped)
}

/// The pool size a process needs: what is configured, but for feed runners at least two
/// connections per subscriber (its `LISTEN` connection and its batch) plus a few for the saga's
/// commands, the worker and the metrics collector. Below that, runners starve each other, time
/// out acquiring connections and lose leadership over and over.
#[must_use]
pub fn pool_size(components: Components, configured: u32, subscribers: usize) -> u32 {
    if components.runners {
        let floor = u32::try_from(2 * subscribers + 4).unwrap_or(u32::MAX);
        configured.max(floor)
    } else {
        configured
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Bind(addr, e))
}
