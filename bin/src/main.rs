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
use mpanel_adapters::provisioners::mail::{MailConfig, SshMailProvisioner};
use mpanel_adapters::worker::ProvisionerSet;
use mpanel_domain::job::JobCommand;
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::{Email, TenantSlug};
use secrecy::SecretString;

/// mpanel: event-sourced order and provisioning engine for hosting companies.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run the feed runners and the saga (everything in one process).
    Serve,
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve => {
            let config = Config::load(&Env).context("invalid configuration")?;
            let provisioners = provisioners().context("invalid provisioner configuration")?;
            mpanel_adapters::runtime::serve(config, provisioners, shutdown_signal()).await?;
        }
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
                    tokio::task::spawn_blocking(move || -> Result<_> {
                        let reader = std::io::BufReader::new(
                            std::fs::File::open(&path)
                                .with_context(|| format!("opening {}", path.display()))?,
                        );
                        Ok(audit::verify_export(reader, scope)?)
                    })
                    .await??
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
            let check = file.clone();
            let verified = tokio::task::spawn_blocking(move || -> Result<_> {
                let reader = std::io::BufReader::new(
                    std::fs::File::open(&check)
                        .with_context(|| format!("opening {}", check.display()))?,
                );
                Ok(audit::verify_export(reader, ExportScope::Full)?)
            })
            .await??;
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
