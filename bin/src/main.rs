//! The `mpanel` binary: subcommands and wiring only.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::sync::Arc;

use mpanel_adapters::auth::{create_user, Role};
use mpanel_adapters::bus::CommandBus;
use mpanel_adapters::config::{self, Config, Env};
use mpanel_adapters::metadata::EventMetadata;
use mpanel_adapters::provisioners::dns::{PowerDnsConfig, PowerDnsProvisioner};
use mpanel_adapters::provisioners::hosting::{HostingConfig, SshHostingProvisioner};
use mpanel_adapters::provisioners::instant::{instant_set, ProvisionerKind};
use mpanel_adapters::provisioners::mail::{MailConfig, SshMailProvisioner};
use mpanel_adapters::runtime::{Components, Stopped};
use mpanel_adapters::worker::ProvisionerSet;
use mpanel_domain::job::JobCommand;
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::{Email, TenantSlug};
use secrecy::SecretString;

/// The process's allocator: on the request path's many short-lived allocations mimalloc
/// placed 13–18 % more orders per second than glibc malloc, for about twice the resident
/// memory (peak ~90 MB in `serve` under load; docs/adr/0022).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mpanel: event-sourced order and provisioning engine for hosting companies.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run the feed runners, the saga and the worker (everything in one
    /// process).
    Serve,
    /// Serve the HTTP API only (with `/metrics`). Run as many as you like behind a balancer.
    Api,
    /// Run the provisioning worker and the due-job sweeper only (`/metrics` on METRICS_PORT
    /// when set).
    Worker,
    /// Run the feed runners (projectors, audit sealer, saga) only; one leader per subscriber
    /// across all processes (`/metrics` on METRICS_PORT when set).
    Runners,
    /// Apply the database migrations.
    Migrate,
    /// Seed data.
    Seed {
        #[command(subcommand)]
        what: SeedWhat,
    },
    /// Staff and customer logins.
    Users {
        #[command(subcommand)]
        what: UsersWhat,
    },
    /// The event log: verify the hash chain, export, replay.
    Events {
        #[command(subcommand)]
        what: EventsWhat,
    },
    /// Feed subscribers (projectors, saga, audit sealer).
    Projections {
        #[command(subcommand)]
        what: ProjectionsWhat,
    },
    /// Provisioning jobs.
    Jobs {
        #[command(subcommand)]
        what: JobsWhat,
    },
}

#[derive(Subcommand)]
enum UsersWhat {
    /// Create a login. The password is read from standard input (prompted for on a terminal),
    /// never from the command line, which other users of the machine can see.
    Create {
        /// The tenant's slug (omit for a super admin).
        #[arg(long)]
        tenant: Option<String>,
        /// The login e-mail.
        #[arg(long)]
        email: String,
        /// super_admin, admin, support, auditor or customer.
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum EventsWhat {
    /// Recompute the hash chain of the database's log, or of an export file without any
    /// database. Exits non-zero and names the first broken position when it does not verify.
    Verify {
        /// An NDJSON export to verify offline instead of the database.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// The file is a tenant-filtered export: check each line's seal, not continuity.
        #[arg(long, requires = "file")]
        sub_chain: bool,
    },
    /// Write the log with its seals as NDJSON to stdout (constant memory).
    Export {
        /// Only events after this global position (in feed order).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Only this tenant's events (a sub-chain: verify it with --sub-chain).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Load a full export into an empty database (verified first), then build every read model.
    Replay {
        /// The NDJSON export.
        #[arg(long)]
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum ProjectionsWhat {
    /// Each subscriber's position, the head, the lag in events and seconds, the last error.
    Status,
    /// Rebuild a read model from position 0 beside the live one and swap it in atomically;
    /// the API keeps serving the old one meanwhile (docs/OPERATIONS.md).
    Rebuild {
        /// A projector's name (catalog, customers, orders, subscriptions, jobs, provisioning)
        /// or `all`. The audit sealer is not a read model and is refused.
        name: String,
        /// Keep the retired tables (schema `retired_<name>_<unix>`) instead of dropping them.
        #[arg(long)]
        keep_old: bool,
        /// Events per build transaction.
        #[arg(long, default_value_t = 5000)]
        batch_size: i64,
    },
}

#[derive(Subcommand)]
enum JobsWhat {
    /// Start a new attempt series for a job (after fixing what made it fail). The job becomes
    /// due at once; a running `mpanel serve` picks it up within a sweep.
    Retry {
        /// The job's id.
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
enum SeedWhat {
    /// The demo tenant `migrahosting` with an admin, a product and a monthly price (idempotent).
    /// The admin password is read from MPANEL_SEED_ADMIN_PASSWORD, never from the command line.
    Demo {
        /// The admin's e-mail address.
        #[arg(
            long,
            env = "MPANEL_SEED_ADMIN_EMAIL",
            default_value = "admin@migrahosting.test"
        )]
        admin_email: String,
    },
}

/// Logs, spans and (when `OTEL_EXPORTER_OTLP_ENDPOINT` is set) OTLP export; see
/// `docs/LOGGING.md`. The guard flushes the exporter when dropped, at the end of `main`.
fn init_tracing() -> Result<mpanel_adapters::telemetry::TelemetryGuard> {
    mpanel_adapters::telemetry::init("mpanel").context("invalid telemetry configuration")
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let _telemetry = init_tracing()?;
    match cli.command {
        Command::Serve => run_role(Components::ALL).await?,
        Command::Api => run_role(Components::API).await?,
        Command::Worker => run_role(Components::WORKER).await?,
        Command::Runners => run_role(Components::RUNNERS).await?,
        Command::Migrate => {
            let pool = pool().await?;
            mpanel_adapters::MIGRATOR
                .run(&pool)
                .await
                .context("applying migrations")?;
            tracing::info!("migrations applied");
        }
        Command::Seed {
            what: SeedWhat::Demo { admin_email },
        } => {
            let email =
                Email::parse(&admin_email).map_err(|e| anyhow::anyhow!("--admin-email {e}"))?;
            let password = std::env::var("MPANEL_SEED_ADMIN_PASSWORD")
                .ok()
                .filter(|p| p.len() >= 12)
                .context("MPANEL_SEED_ADMIN_PASSWORD must be set to at least 12 characters")?;
            let pool = pool().await?;
            let bus = CommandBus::new(&pool);
            let seeded =
                mpanel_adapters::seed::demo(&pool, &bus, &email, &SecretString::from(password))
                    .await?;
            println!("{}", serde_json::to_string(&seeded)?);
        }
        Command::Users {
            what:
                UsersWhat::Create {
                    tenant,
                    email,
                    role,
                },
        } => {
            let email = Email::parse(&email).map_err(|e| anyhow::anyhow!("--email {e}"))?;
            let role: Role = role.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--role must be one of super_admin, admin, support, auditor, customer"
                )
            })?;
            let tenant = tenant
                .map(|t| TenantSlug::parse(&t).map_err(|e| anyhow::anyhow!("--tenant {e}")))
                .transpose()?;
            let password = read_password()?;
            let pool = pool().await?;
            let tenant_id = match tenant {
                Some(slug) => {
                    let id = mpanel_domain::ids::tenant_id(&slug);
                    let known: Option<uuid::Uuid> =
                        sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&pool)
                            .await
                            .context("looking up the tenant")?;
                    known.with_context(|| format!("no tenant {slug}"))?;
                    Some(id)
                }
                None => None,
            };
            let id = create_user(&pool, tenant_id, &email, role, &password)
                .await
                .context("creating the user")?;
            println!(
                "{}",
                serde_json::json!({ "userId": id, "email": email.as_str(), "role": role.as_str() })
            );
        }
        Command::Events { what } => return events(what).await,
        Command::Projections {
            what: ProjectionsWhat::Status,
        } => {
            let pool = pool().await?;
            let status = mpanel_projections::status::status(&pool, &["saga"])
                .await
                .context("reading checkpoints")?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Command::Projections {
            what:
                ProjectionsWhat::Rebuild {
                    name,
                    keep_old,
                    batch_size,
                },
        } => {
            use mpanel_projections::rebuild;
            anyhow::ensure!(batch_size > 0, "--batch-size must be positive");
            let projectors = rebuild::select(&name)?;
            let pool = pool().await?;
            let options = rebuild::RebuildOptions {
                batch_size,
                keep_old,
                ..rebuild::RebuildOptions::default()
            };
            // Together: one read of the log feeds every projector's build (rebuild.rs).
            let reports = rebuild::rebuild_all(&pool, &projectors, &options)
                .await
                .with_context(|| format!("rebuilding {name}"))?;
            for report in reports {
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Command::Jobs {
            what: JobsWhat::Retry { id },
        } => {
            let pool = pool().await?;
            let bus = CommandBus::new(&pool);
            let retry = JobCommand::Retry {
                requested_by: "cli".into(),
                at: chrono::Utc::now(),
            };
            let executed = bus
                .jobs
                .execute(id, retry, &EventMetadata::new("cli"))
                .await
                .with_context(|| format!("retrying job {id}"))?;
            let series = executed.state.series();
            println!(
                "{}",
                serde_json::json!({ "jobId": id, "series": series, "status": "SCHEDULED" })
            );
        }
    }
    Ok(())
}

/// `mpanel events …`; exits 1 when a verification fails.
async fn events(what: EventsWhat) -> Result<()> {
    use mpanel_projections::audit::{self, ExportFilter, ExportScope};
    match what {
        EventsWhat::Verify { file, sub_chain } => {
            let report = match file {
                Some(path) => {
                    let scope = if sub_chain {
                        ExportScope::SubChain
                    } else {
                        ExportScope::Full
                    };
                    verify_file(path, scope).await?
                }
                None => audit::verify_database(&pool().await?)
                    .await
                    .context("verifying the log")?,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.is_ok() {
                std::process::exit(1);
            }
        }
        EventsWhat::Export { after, tenant } => {
            let tenant = tenant
                .map(|t| TenantSlug::parse(&t).map(|s| mpanel_domain::ids::tenant_id(&s)))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--tenant {e}"))?;
            let pool = pool().await?;
            let filter = ExportFilter {
                after,
                tenant,
                limit: None,
            };
            let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
            let summary = audit::export(&pool, &filter, &mut out)
                .await
                .context("exporting")?;
            tokio::io::AsyncWriteExt::flush(&mut out).await?;
            eprintln!("{}", serde_json::to_string(&summary)?);
        }
        EventsWhat::Replay { file } => {
            let verified = verify_file(file.clone(), ExportScope::Full).await?;
            anyhow::ensure!(
                verified.is_ok(),
                "the export does not verify: {}",
                serde_json::to_string(&verified)?
            );
            let pool = pool().await?;
            let reader = std::io::BufReader::new(
                std::fs::File::open(&file)
                    .with_context(|| format!("opening {}", file.display()))?,
            );
            let summary = audit::replay_export(reader, &pool, audit::DEFAULT_REPLAY_BATCH)
                .await
                .context("replaying")?;
            for subscriber in mpanel_projections::projectors::all() {
                mpanel_projections::runner::catch_up(&pool, &subscriber, 5000)
                    .await
                    .map_err(|f| {
                        anyhow::anyhow!("{} failed at {}: {}", subscriber.name(), f.at, f.error)
                    })?;
            }
            // The saga's decisions are already in the log: it starts at the head, not at 0.
            sqlx::query(
                "INSERT INTO checkpoints (subscriber, tx_id, position) \
                 SELECT 'saga', tx_id, global_position FROM events ORDER BY tx_id DESC, global_position DESC LIMIT 1 \
                 ON CONFLICT (subscriber) DO UPDATE SET tx_id = EXCLUDED.tx_id, position = EXCLUDED.position",
            )
            .execute(&pool)
            .await
            .context("placing the saga at the head")?;
            println!("{}", serde_json::to_string(&summary)?);
        }
    }
    Ok(())
}

/// Verifies an export file's chain (or sub-chain) off the runtime: it reads the whole file.
async fn verify_file(
    path: std::path::PathBuf,
    scope: mpanel_projections::audit::ExportScope,
) -> Result<mpanel_projections::audit::VerifyReport> {
    tokio::task::spawn_blocking(move || -> Result<_> {
        let reader = std::io::BufReader::new(
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?,
        );
        Ok(mpanel_projections::audit::verify_export(reader, scope)?)
    })
    .await?
}

/// Reads a password from standard input: one line, without its newline. On a terminal it asks
/// first (and the input is echoed — pipe it in to avoid that).
fn read_password() -> Result<SecretString> {
    use std::io::{BufRead, Write};
    if std::io::stdin().is_terminal() {
        eprint!("password: ");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    Ok(SecretString::from(password))
}

/// Runs one role until SIGTERM/SIGINT. Every role validates the provisioner choice (the
/// bench-only `instant` set is refused without its allow flag, even where unused); roles with
/// the worker build the provisioners. After a timed-out graceful shutdown the process exits
/// within seconds even if blocking work still runs.
async fn run_role(components: Components) -> Result<()> {
    let config = Config::load(&Env).context("invalid configuration")?;
    let kind = ProvisionerKind::from_env(&Env).context("invalid provisioner configuration")?;
    let provisioners = match (components.worker, kind) {
        (false, _) => ProvisionerSet::default(),
        (true, ProvisionerKind::Real) => {
            provisioners().context("invalid provisioner configuration")?
        }
        (true, ProvisionerKind::Instant { delay }) => {
            tracing::warn!("using the bench-only instant provisioners: no real work is done");
            instant_set(&config.database_url, delay).context("instant provisioners")?
        }
    };
    let stopped =
        mpanel_adapters::runtime::run(config, components, provisioners, shutdown_signal()).await?;
    if stopped == Stopped::TimedOut {
        // Let `main` return so the telemetry guard flushes (bounded by 5 s), but do not let
        // blocking work still running (an SSH session) hold the exit: a watchdog ends the
        // process shortly after.
        std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_secs(6));
            std::process::exit(0);
        });
    }
    Ok(())
}

/// The real provisioners, each configured from its environment variables.
fn provisioners() -> Result<ProvisionerSet> {
    let dns = PowerDnsProvisioner::new(PowerDnsConfig::from_env()?)?;
    let hosting = SshHostingProvisioner::new(HostingConfig::from_env()?)?;
    let mail = SshMailProvisioner::new(MailConfig::from_env()?)?;
    Ok(ProvisionerSet::default()
        .with(ProvisioningStep::Dns, Arc::new(dns))
        .with(ProvisioningStep::Hosting, Arc::new(hosting))
        .with(ProvisioningStep::Mail, Arc::new(mail)))
}

async fn pool() -> Result<sqlx::PgPool> {
    let url = config::database_url(&Env).context("invalid configuration")?;
    config::connect(&url, 4)
        .await
        .context("connecting to Postgres")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
