//! The hosting provisioner: an account (system user, home, web root, placeholder page, vhost)
//! on a web server, made by one versioned, idempotent script run over SSH (DESIGN §4, ADR 0011).
//!
//! The request's [`JobAction`] picks what the script does: `Provision` converges the account,
//! `Suspend` serves a placeholder page instead of the site (every file kept), `Unsuspend`
//! converges back to the normal site, `Terminate` removes the vhost and moves the account to
//! `HOSTING_ARCHIVE_DIR`. Each converges: a re-run after a success or a crash repairs.
//!
//! Nothing from a request reaches the remote shell raw: the domain is a [`DomainName`] (strict
//! LDH syntax), the system user is derived from it ([`SystemUser`]), the directories come from
//! operator configuration checked at start, and every value is single-quoted by
//! [`super::ssh::shell_quote`]. The script checks all of them again, because it runs as root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mpanel_domain::job::{JobAction, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::DomainName;
use sha2::{Digest, Sha256};

use super::ssh::{
    check_remote_dir, check_server_name, ProvisionerConfigError, ScriptContract, SshTarget,
};
use super::{ProvisionError, ProvisionRequest, Provisioner};
use crate::config::{Env, Lookup};

/// The remote script, embedded so the binary and the script it sends can never disagree.
pub const SCRIPT: &str = include_str!("hosting_account.sh");

/// The version the embedded script announces on its first line; a different one in the output
/// means the output did not come from this script and is not trusted.
pub const SCRIPT_VERSION: u32 = 2;

/// The script's "invalid arguments" exit status (sysexits `EX_USAGE`): retrying cannot help.
const EXIT_USAGE: i32 = 64;

/// How a run of [`SCRIPT`] is judged. Permanent: 64, arguments refused; 126/127, no usable `sh`
/// on the server.
const CONTRACT: ScriptContract = ScriptContract {
    name: "hosting",
    version_var: "MPANEL_HOSTING_SCRIPT_VERSION",
    version: SCRIPT_VERSION,
    permanent_exit_statuses: &[EXIT_USAGE, 126, 127],
};

/// How the hosting provisioner reaches and lays out the web server. Checked by
/// [`SshHostingProvisioner::new`], since everything here ends up in a root shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostingConfig {
    /// The web server (`HOSTING_SSH_*`, falling back to `SSH_*`).
    pub target: SshTarget,
    /// Where accounts live on the web server (`HOSTING_ROOT`, required): `ROOT/DOMAIN/` and
    /// `ROOT/vhosts/DOMAIN.conf`.
    pub root_dir: PathBuf,
    /// Where terminated accounts are moved for the retention period (`HOSTING_ARCHIVE_DIR`,
    /// default `HOSTING_ROOT` + `-archive`, e.g. `/srv/mpanel/hosting-archive`): a sibling of the
    /// root, so on the same filesystem and the move is a rename, and outside it, so archives
    /// never mix with live accounts. Created by the script when missing.
    pub archive_dir: PathBuf,
    /// The address vhosts listen on (`HOSTING_WEB_IPV4`, default 127.0.0.1).
    pub web_ipv4: Ipv4Addr,
    /// Whether to create a system user per account (`HOSTING_CREATE_SYSTEM_USERS`, default
    /// false): off where the script cannot or should not call `useradd` (tests, containers).
    pub create_system_users: bool,
    /// The server's name as recorded in the outcome and read models (`HOSTING_SERVER_NAME`,
    /// default `web1`).
    pub server_name: String,
}

impl HostingConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    /// [`ProvisionerConfigError`] naming the first missing or invalid variable.
    pub fn from_env() -> Result<Self, ProvisionerConfigError> {
        Self::from_lookup(&Env)
    }

    /// [`HostingConfig::from_env`] over any variable source (a map in tests).
    ///
    /// # Errors
    /// [`ProvisionerConfigError`] naming the first missing or invalid variable.
    pub fn from_lookup(env: &impl Lookup) -> Result<Self, ProvisionerConfigError> {
        let error = |var: &str, reason: String| ProvisionerConfigError {
            var: var.to_owned(),
            reason,
        };
        let target = SshTarget::from_lookup(env, "HOSTING_")?;
        let root_dir = env
            .get("HOSTING_ROOT")
            .ok_or_else(|| error("HOSTING_ROOT", "must be set".into()))?;
        let checked_root =
            check_remote_dir(Path::new(&root_dir)).map_err(|e| error("HOSTING_ROOT", e))?;
        let archive_dir = env
            .get("HOSTING_ARCHIVE_DIR")
            .unwrap_or_else(|| format!("{checked_root}-archive"));
        check_archive_dir(Path::new(&archive_dir), &checked_root)
            .map_err(|e| error("HOSTING_ARCHIVE_DIR", e))?;
        let web_ipv4 = match env.get("HOSTING_WEB_IPV4") {
            None => Ipv4Addr::LOCALHOST,
            Some(v) => v
                .parse()
                .map_err(|_| error("HOSTING_WEB_IPV4", format!("{v:?} is not an IPv4 address")))?,
        };
        let create_system_users = match env.get("HOSTING_CREATE_SYSTEM_USERS").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(v) => {
                return Err(error(
                    "HOSTING_CREATE_SYSTEM_USERS",
                    format!("{v:?} is not true/false/1/0"),
                ))
            }
        };
        let server_name = env
            .get("HOSTING_SERVER_NAME")
            .unwrap_or_else(|| "web1".to_owned());
        check_server_name(&server_name).map_err(|e| error("HOSTING_SERVER_NAME", e))?;
        Ok(Self {
            target,
            root_dir: PathBuf::from(root_dir),
            archive_dir: PathBuf::from(archive_dir),
            web_ipv4,
            create_system_users,
            server_name,
        })
    }
}

/// Checks an archive directory: a remote directory ([`check_remote_dir`]) that is neither the
/// root directory nor inside it (a domain directory could be archived into itself, and the
/// archive would look like accounts). Returns it without a trailing slash.
fn check_archive_dir(archive_dir: &Path, root_dir: &str) -> Result<String, String> {
    let archive = check_remote_dir(archive_dir)?;
    if archive == root_dir || archive.starts_with(&format!("{root_dir}/")) {
        return Err(format!(
            "{archive:?} must be outside the hosting root {root_dir:?}"
        ));
    }
    Ok(archive)
}

/// An account's Unix user name: `h` + the first 12 hex digits of SHA-256(domain).
///
/// Derived, not chosen, so the same domain always gets the same user (re-provisioning converges
/// instead of creating a second one), the name fits every `useradd` (13 chars of `[a-z0-9]`,
/// starting with a letter), and no customer-chosen text becomes a user name. 48 bits make a
/// collision between two domains on one server negligible.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SystemUser(String);

impl SystemUser {
    /// The user for a domain.
    #[must_use]
    pub fn for_domain(domain: &DomainName) -> Self {
        let digest = Sha256::digest(domain.as_str().as_bytes());
        let mut name = String::with_capacity(13);
        name.push('h');
        for byte in digest.iter().take(6) {
            name.push_str(&format!("{byte:02x}"));
        }
        Self(name)
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SystemUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Provisions hosting accounts on one web server over SSH; see the module docs.
#[derive(Debug, Clone)]
pub struct SshHostingProvisioner {
    config: HostingConfig,
    /// `config.root_dir`, checked and without a trailing slash.
    root_dir: String,
    /// `config.archive_dir`, checked and without a trailing slash.
    archive_dir: String,
}

impl SshHostingProvisioner {
    /// Checks the configuration once, at start, so a bad root directory fails the boot rather
    /// than every job.
    ///
    /// # Errors
    /// [`ProvisionerConfigError`] naming the setting.
    pub fn new(config: HostingConfig) -> Result<Self, ProvisionerConfigError> {
        let root_dir =
            check_remote_dir(&config.root_dir).map_err(|reason| ProvisionerConfigError {
                var: "HOSTING_ROOT".into(),
                reason,
            })?;
        let archive_dir = check_archive_dir(&config.archive_dir, &root_dir).map_err(|reason| {
            ProvisionerConfigError {
                var: "HOSTING_ARCHIVE_DIR".into(),
                reason,
            }
        })?;
        check_server_name(&config.server_name).map_err(|reason| ProvisionerConfigError {
            var: "HOSTING_SERVER_NAME".into(),
            reason,
        })?;
        Ok(Self {
            config,
            root_dir,
            archive_dir,
        })
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &HostingConfig {
        &self.config
    }

    /// Where a domain's web root is (what the outcome records and the script must report).
    #[must_use]
    pub fn web_root(&self, domain: &DomainName) -> String {
        format!("{}/{domain}/public_html", self.root_dir)
    }

    /// Where a domain's vhost file is.
    #[must_use]
    pub fn vhost_path(&self, domain: &DomainName) -> String {
        format!("{}/vhosts/{domain}.conf", self.root_dir)
    }

    /// Where a suspended domain's placeholder page lives (the vhost's root while suspended);
    /// beside the web root, so the customer's files are never touched.
    #[must_use]
    pub fn suspended_dir(&self, domain: &DomainName) -> String {
        format!("{}/{domain}/suspended", self.root_dir)
    }

    /// The arguments `ensure` and `unsuspend` share after the action name.
    fn account_args(&self, action: &str, domain: &DomainName) -> Vec<String> {
        vec![
            action.to_owned(),
            self.root_dir.clone(),
            SystemUser::for_domain(domain).to_string(),
            domain.to_string(),
            self.config.web_ipv4.to_string(),
            if self.config.create_system_users {
                "1"
            } else {
                "0"
            }
            .to_owned(),
        ]
    }

    /// Converges the account (`ensure`); a suspended account stays suspended.
    async fn ensure(&self, domain: &DomainName) -> Result<StepOutcome, ProvisionError> {
        let args = self.account_args("ensure", domain);
        let output = self.config.target.run_script(SCRIPT, &args, None).await?;
        let line = CONTRACT.checked_last_line(&output)?;
        let web_root = self.web_root(domain);
        let vhost_path = self.vhost_path(domain);
        if line != format!("OK {web_root} {vhost_path}") {
            return Err(CONTRACT.unexpected_output());
        }
        let user = SystemUser::for_domain(domain);
        tracing::info!(system_user = %user, web_root = %web_root, "hosting account converged");
        Ok(StepOutcome::Hosting {
            server: self.config.server_name.clone(),
            system_user: user.to_string(),
            web_root,
            vhost_path,
        })
    }

    /// Serves the placeholder page instead of the site; every file is kept.
    async fn suspend(&self, domain: &DomainName) -> Result<StepOutcome, ProvisionError> {
        let args = vec![
            "suspend".to_owned(),
            self.root_dir.clone(),
            domain.to_string(),
            self.config.web_ipv4.to_string(),
        ];
        let output = self.config.target.run_script(SCRIPT, &args, None).await?;
        let line = CONTRACT.checked_last_line(&output)?;
        let expected = format!(
            "SUSPENDED {} {}",
            self.suspended_dir(domain),
            self.vhost_path(domain)
        );
        if line != expected {
            return Err(CONTRACT.unexpected_output());
        }
        tracing::info!("hosting account suspended");
        Ok(self.changed(JobAction::Suspend, domain, None))
    }

    /// Converges the account with its normal vhost and drops the placeholder directory.
    async fn unsuspend(&self, domain: &DomainName) -> Result<StepOutcome, ProvisionError> {
        let args = self.account_args("unsuspend", domain);
        let output = self.config.target.run_script(SCRIPT, &args, None).await?;
        let line = CONTRACT.checked_last_line(&output)?;
        let expected = format!(
            "UNSUSPENDED {} {}",
            self.web_root(domain),
            self.vhost_path(domain)
        );
        if line != expected {
            return Err(CONTRACT.unexpected_output());
        }
        tracing::info!("hosting account unsuspended");
        Ok(self.changed(JobAction::Unsuspend, domain, None))
    }

    /// What a lifecycle action reports: done to the domain's web root on this server.
    fn changed(
        &self,
        action: JobAction,
        domain: &DomainName,
        archived: Option<String>,
    ) -> StepOutcome {
        StepOutcome::Changed {
            action,
            server: self.config.server_name.clone(),
            target: self.web_root(domain),
            archived,
        }
    }

    /// Takes an account offline for termination (what [`JobAction::Terminate`] runs with the
    /// configured archive directory): deletes its vhost, then moves its whole directory (home,
    /// web root, a suspended placeholder) to `archive_dir/DOMAIN.<UTC time>` for the retention
    /// period. Idempotent: with nothing left to remove it succeeds and returns `None`;
    /// otherwise it returns where the files went. The system user is kept (its uid still owns
    /// the archived files); deleting it belongs to the end of retention.
    ///
    /// `archive_dir` should be on the same filesystem as the root directory, so the move is an
    /// atomic rename.
    ///
    /// # Errors
    /// [`ProvisionError`]: permanent for a bad `archive_dir` (not an absolute plain path, or
    /// inside the hosting root) or SSH trust/auth problems,
    /// transient for network trouble or a failing host.
    #[tracing::instrument(name = "hosting.remove_account", skip_all, fields(domain = %domain))]
    pub async fn remove_account(
        &self,
        domain: &DomainName,
        archive_dir: &Path,
    ) -> Result<Option<String>, ProvisionError> {
        let archive_dir = check_archive_dir(archive_dir, &self.root_dir)
            .map_err(|e| ProvisionError::Permanent(format!("archive directory: {e}")))?;
        let args = vec![
            "remove".to_owned(),
            self.root_dir.clone(),
            domain.to_string(),
            archive_dir.clone(),
        ];
        let output = self.config.target.run_script(SCRIPT, &args, None).await?;
        let line = CONTRACT.checked_last_line(&output)?;
        match line.strip_prefix("REMOVED ") {
            Some("-") => {
                tracing::info!("hosting account already removed");
                Ok(None)
            }
            Some(path) if path.starts_with(&format!("{archive_dir}/")) && !path.contains(' ') => {
                tracing::info!(archived = %path, "hosting account removed");
                Ok(Some(path.to_owned()))
            }
            _ => Err(CONTRACT.unexpected_output()),
        }
    }
}

#[async_trait]
impl Provisioner for SshHostingProvisioner {
    async fn provision(&self, request: &ProvisionRequest) -> Result<StepOutcome, ProvisionError> {
        if request.step != ProvisioningStep::Hosting {
            return Err(ProvisionError::Permanent(format!(
                "the hosting provisioner cannot run a {} step",
                request.step
            )));
        }
        let domain = &request.domain;
        match request.action {
            JobAction::Provision => self.ensure(domain).await,
            JobAction::Suspend => self.suspend(domain).await,
            JobAction::Unsuspend => self.unsuspend(domain).await,
            JobAction::Terminate => {
                let archive_dir = PathBuf::from(&self.archive_dir);
                let archived = self.remove_account(domain, &archive_dir).await?;
                Ok(self.changed(JobAction::Terminate, domain, archived))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::provisioners::ssh::Output;

    fn domain(name: &str) -> DomainName {
        DomainName::parse(name).expect("valid domain")
    }

    fn output(status: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            status,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn system_user_is_deterministic_short_and_plain() {
        let a = SystemUser::for_domain(&domain("example.com"));
        assert_eq!(a, SystemUser::for_domain(&domain("EXAMPLE.com")));
        assert_ne!(a, SystemUser::for_domain(&domain("example.org")));
        let name = a.as_str();
        assert_eq!(name.len(), 13);
        assert!(name.starts_with('h'));
        assert!(name[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        // sha256("example.com") = a379a6f6eeafb9a5...
        assert_eq!(name, "ha379a6f6eeaf");
    }

    #[test]
    fn config_reads_defaults_and_names_bad_variables() {
        let mut env = HashMap::from([
            ("SSH_HOST", "127.0.0.1"),
            ("SSH_USER", "root"),
            ("SSH_KEY_PATH", "/k/id"),
            ("SSH_KNOWN_HOSTS", "/k/known_hosts"),
            ("HOSTING_ROOT", "/srv/hosting"),
        ]);
        let config = HostingConfig::from_lookup(&env).expect("valid");
        assert_eq!(config.web_ipv4, Ipv4Addr::LOCALHOST);
        assert!(!config.create_system_users);
        assert_eq!(config.server_name, "web1");
        assert_eq!(config.target.port, 22);
        assert_eq!(config.archive_dir, PathBuf::from("/srv/hosting-archive"));
        env.insert("HOSTING_ROOT", "/srv/hosting/");
        assert_eq!(
            HostingConfig::from_lookup(&env).expect("valid").archive_dir,
            PathBuf::from("/srv/hosting-archive"),
            "a trailing slash does not end up inside the default"
        );
        for bad in [
            "archive",
            "/srv/hosting",
            "/srv/hosting/archive",
            "/srv/a b",
        ] {
            env.insert("HOSTING_ARCHIVE_DIR", bad);
            let error = HostingConfig::from_lookup(&env).expect_err(bad);
            assert_eq!(error.var, "HOSTING_ARCHIVE_DIR", "{bad}");
        }
        env.insert("HOSTING_ARCHIVE_DIR", "/srv/hosting-old");
        assert_eq!(
            HostingConfig::from_lookup(&env).expect("valid").archive_dir,
            PathBuf::from("/srv/hosting-old")
        );
        env.remove("HOSTING_ARCHIVE_DIR");

        env.insert("HOSTING_ROOT", "srv");
        let error = HostingConfig::from_lookup(&env).expect_err("relative root");
        assert_eq!(error.var, "HOSTING_ROOT");
        env.insert("HOSTING_ROOT", "/srv");
        env.insert("HOSTING_CREATE_SYSTEM_USERS", "yes");
        let error = HostingConfig::from_lookup(&env).expect_err("bad bool");
        assert_eq!(error.var, "HOSTING_CREATE_SYSTEM_USERS");
        env.remove("HOSTING_CREATE_SYSTEM_USERS");
        env.insert("HOSTING_SERVER_NAME", "web 1");
        let error = HostingConfig::from_lookup(&env).expect_err("bad name");
        assert_eq!(error.var, "HOSTING_SERVER_NAME");
    }

    #[test]
    fn exit_statuses_map_to_the_retry_policy() {
        let usage = output(64, "", "mpanel-hosting: bad\n");
        assert_eq!(
            CONTRACT.checked_last_line(&usage),
            Err(ProvisionError::Permanent(
                "hosting script exited with status 64: mpanel-hosting: bad".into()
            ))
        );
        assert!(matches!(
            CONTRACT.checked_last_line(&output(1, "", "mkdir: No space left\n")),
            Err(ProvisionError::Transient(_))
        ));
    }

    #[test]
    fn output_must_come_from_this_script_version() {
        let good = output(0, "MPANEL_HOSTING_SCRIPT_VERSION=2\nOK /a /b\n", "");
        assert_eq!(CONTRACT.checked_last_line(&good), Ok("OK /a /b"));
        for stdout in [
            "OK /a /b\n",
            "MPANEL_HOSTING_SCRIPT_VERSION=1\nOK /a /b\n",
            "",
        ] {
            assert!(
                CONTRACT.checked_last_line(&output(0, stdout, "")).is_err(),
                "{stdout:?}"
            );
        }
    }

    #[test]
    fn embedded_script_announces_the_version_the_code_expects() {
        assert!(SCRIPT.contains(&format!(
            "\nMPANEL_HOSTING_SCRIPT_VERSION={SCRIPT_VERSION}\n"
        )));
    }
}
