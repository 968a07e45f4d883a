//! The mail provisioner: a mailbox on a Dovecot host — one line in Dovecot's passwd-file with a
//! SHA512-CRYPT hash, and a Maildir owned by the virtual mail user — made by one versioned,
//! idempotent script run over SSH (DESIGN §4, ADR 0012).
//!
//! The request's [`JobAction`] picks what the script does: `Provision` converges the mailbox,
//! `Suspend` refuses its logins (Dovecot's `nologin` extra field; hash and mail kept),
//! `Unsuspend` lets it log in again, `Terminate` deletes its line and moves its Maildir to
//! `MAIL_ARCHIVE_DIR`. Each converges: a re-run after a success or a crash changes nothing more.
//!
//! Why it looks the way it does:
//! - One mailbox per subscription for now, `postmaster@DOMAIN`: RFC 2142 requires that address
//!   for every domain that receives mail, so it is the one mailbox every plan needs.
//! - mpanel never hands out a mailbox password. The mailbox is created with a random password
//!   nobody knows (generated here, hashed on the mail host, then forgotten); the customer chooses
//!   one through [`SshMailProvisioner::set_password`], which a password-set API will call. A
//!   provisioning job runs at least once and its events are kept forever, so a password that
//!   passed through it could neither be delivered exactly once nor be erased (ADR 0012).
//! - Passwords travel only on the script's standard input, over the SSH channel, straight into
//!   the hashing tool on the mail host: never in an argument (visible in `ps`), a file, an event,
//!   a log line or an error message. They are [`SecretString`]s on this side.
//! - A re-run keeps an existing passwd-file line as it is, so provisioning again (an operator's
//!   repair, a retried job) never resets a password the customer set.
//! - Nothing from a request reaches the remote shell raw: the domain is a [`DomainName`], the
//!   local part a [`LocalPart`], paths come from configuration checked at start, and every value
//!   is single-quoted by [`super::ssh::shell_quote`]. The script checks them again (it runs as
//!   root).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mpanel_domain::job::{JobAction, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::DomainName;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use super::ssh::{
    check_remote_dir, check_server_name, ProvisionerConfigError, ScriptContract, SshTarget,
};
use super::{ProvisionError, ProvisionRequest, Provisioner};
use crate::config::{Env, Lookup};

/// The remote script, embedded so the binary and the script it sends can never disagree.
pub const SCRIPT: &str = include_str!("mail_account.sh");

/// The version the embedded script announces on its first line; a different one in the output
/// means the output did not come from this script and is not trusted.
pub const SCRIPT_VERSION: u32 = 3;

/// Length of the initial random password: 32 alphanumeric characters from the OS's CSPRNG are
/// about 190 bits, beyond any guessing, and need no escaping anywhere.
const INITIAL_PASSWORD_LEN: usize = 32;

/// Shortest password [`SshMailProvisioner::set_password`] accepts (the script refuses shorter).
pub const MIN_PASSWORD_LEN: usize = 8;

/// Longest password, in bytes, [`SshMailProvisioner::set_password`] accepts: `openssl passwd`
/// silently cuts passwords at 256 bytes, so longer ones would not mean what the customer typed.
pub const MAX_PASSWORD_BYTES: usize = 128;

/// Script exit statuses (sysexits) after which retrying cannot help: invalid arguments (64), no
/// usable password on stdin (65), no such mailbox (67), no hashing tool (69), the host is not
/// set up as configured (78), and no usable `sh` (126/127). Everything else (75: the
/// passwd-file lock was busy; 1: a command failed) may pass.
const PERMANENT_EXIT_STATUSES: [i32; 7] = [64, 65, 67, 69, 78, 126, 127];

/// How a run of [`SCRIPT`] is judged.
const CONTRACT: ScriptContract = ScriptContract {
    name: "mail",
    version_var: "MPANEL_MAIL_SCRIPT_VERSION",
    version: SCRIPT_VERSION,
    permanent_exit_statuses: &PERMANENT_EXIT_STATUSES,
};

/// How the mail provisioner reaches and lays out the Dovecot host. Checked by
/// [`SshMailProvisioner::new`], since everything here ends up in a root shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// The mail host (`MAIL_SSH_*`, falling back to `SSH_*`).
    pub target: SshTarget,
    /// Dovecot's passwd-file on the mail host (`MAIL_PASSWD_FILE`, required). It must exist:
    /// the script never creates it, since a missing one means a wrong path or lost mailboxes.
    pub passwd_file: PathBuf,
    /// The Maildir root, Dovecot's `mail_location = maildir:ROOT/%d/%n` (`MAIL_ROOT`, required).
    pub mail_root: PathBuf,
    /// Where terminated mailboxes' Maildirs are moved for the retention period
    /// (`MAIL_ARCHIVE_DIR`, default `MAIL_ROOT` + `-archive`): a sibling of the mail root, so on
    /// its filesystem (the move is a rename) and outside what Dovecot serves. Created by the
    /// script when missing.
    pub archive_dir: PathBuf,
    /// The host's name as recorded in the outcome and read models (`MAIL_SERVER_NAME`, default
    /// `mail1`).
    pub server_name: String,
    /// Owner of the Maildirs, the uid of Dovecot's static userdb (`MAIL_VMAIL_UID`, default
    /// 5000).
    pub vmail_uid: u32,
    /// Group of the Maildirs (`MAIL_VMAIL_GID`, default 5000).
    pub vmail_gid: u32,
}

impl MailConfig {
    /// Reads the configuration from the environment.
    ///
    /// # Errors
    /// [`ProvisionerConfigError`] naming the first missing or invalid variable.
    pub fn from_env() -> Result<Self, ProvisionerConfigError> {
        Self::from_lookup(&Env)
    }

    /// [`MailConfig::from_env`] over any variable source (a map in tests).
    ///
    /// # Errors
    /// [`ProvisionerConfigError`] naming the first missing or invalid variable.
    pub fn from_lookup(env: &impl Lookup) -> Result<Self, ProvisionerConfigError> {
        let error = |var: &str, reason: String| ProvisionerConfigError {
            var: var.to_owned(),
            reason,
        };
        let target = SshTarget::from_lookup(env, "MAIL_")?;
        let path = |var: &str| {
            let value = env
                .get(var)
                .ok_or_else(|| error(var, "must be set".into()))?;
            check_remote_dir(Path::new(&value)).map_err(|e| error(var, e))?;
            Ok::<_, ProvisionerConfigError>(PathBuf::from(value))
        };
        let passwd_file = path("MAIL_PASSWD_FILE")?;
        let mail_root = path("MAIL_ROOT")?;
        let archive_dir = env.get("MAIL_ARCHIVE_DIR").unwrap_or_else(|| {
            format!(
                "{}-archive",
                mail_root.display().to_string().trim_end_matches('/')
            )
        });
        let root_text = mail_root.display().to_string();
        check_archive_dir(Path::new(&archive_dir), root_text.trim_end_matches('/'))
            .map_err(|e| error("MAIL_ARCHIVE_DIR", e))?;
        let server_name = env
            .get("MAIL_SERVER_NAME")
            .unwrap_or_else(|| "mail1".to_owned());
        check_server_name(&server_name).map_err(|e| error("MAIL_SERVER_NAME", e))?;
        let id = |var: &str| match env.get(var) {
            None => Ok(5000),
            Some(v) => match v.parse::<u32>() {
                Ok(id) if id != 0 => Ok(id),
                _ => Err(error(var, format!("{v:?} is not a uid/gid other than 0"))),
            },
        };
        Ok(Self {
            target,
            passwd_file,
            mail_root,
            archive_dir: PathBuf::from(archive_dir),
            server_name,
            vmail_uid: id("MAIL_VMAIL_UID")?,
            vmail_gid: id("MAIL_VMAIL_GID")?,
        })
    }
}

/// Checks an archive directory: a remote directory ([`check_remote_dir`]) that is neither the
/// mail root nor inside it (Dovecot would see archived Maildirs as mail domains). Returns it
/// without a trailing slash.
fn check_archive_dir(archive_dir: &Path, mail_root: &str) -> Result<String, String> {
    let archive = check_remote_dir(archive_dir)?;
    if archive == mail_root || archive.starts_with(&format!("{mail_root}/")) {
        return Err(format!(
            "{archive:?} must be outside the mail root {mail_root:?}"
        ));
    }
    Ok(archive)
}

/// The part of a mail address before the `@`, restricted to what is safe as a passwd-file key
/// and a directory name: lowercase `[a-z0-9]` at both ends, `[a-z0-9._-]` inside, no `..`, at
/// most 64 characters (RFC 5321's limit). Lowercase only, because Dovecot lowercases the user
/// name at login (`auth_username_format = %Lu`), so `Info` and `info` must be one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalPart(String);

impl LocalPart {
    /// `postmaster`, the mailbox every mail domain must have (RFC 2142) and the one each
    /// subscription gets.
    #[must_use]
    pub fn postmaster() -> Self {
        Self("postmaster".to_owned())
    }

    /// Checks a local part; uppercase is folded to lowercase.
    ///
    /// # Errors
    /// The rule that failed (no input is echoed: it may be anything).
    pub fn parse(input: &str) -> Result<Self, String> {
        let lower = input.to_ascii_lowercase();
        let bytes = lower.as_bytes();
        let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
        let valid = lower.len() <= 64
            && edge_ok(bytes.first())
            && edge_ok(bytes.last())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
            && !lower.contains("..");
        if valid {
            Ok(Self(lower))
        } else {
            Err(
                "a local part is 1-64 letters, digits, '.', '_' or '-', starting and ending \
                 with a letter or digit, without '..'"
                    .into(),
            )
        }
    }

    /// The local part.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LocalPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What of a mailbox is on the mail host; terminate and repairs need both halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxStatus {
    /// The passwd-file has a line for the address (it can log in).
    pub in_passwd_file: bool,
    /// Its Maildir exists.
    pub maildir: bool,
}

/// Provisions mailboxes on one Dovecot host over SSH; see the module docs.
#[derive(Debug, Clone)]
pub struct SshMailProvisioner {
    config: MailConfig,
    /// `config.passwd_file`, checked.
    passwd_file: String,
    /// `config.mail_root`, checked and without a trailing slash.
    mail_root: String,
    /// `config.archive_dir`, checked and without a trailing slash.
    archive_dir: String,
}

impl SshMailProvisioner {
    /// Checks the configuration once, at start, so a bad path fails the boot rather than every
    /// job.
    ///
    /// # Errors
    /// [`ProvisionerConfigError`] naming the setting.
    pub fn new(config: MailConfig) -> Result<Self, ProvisionerConfigError> {
        let error = |var: &str| {
            let var = var.to_owned();
            move |reason| ProvisionerConfigError { var, reason }
        };
        let passwd_file =
            check_remote_dir(&config.passwd_file).map_err(error("MAIL_PASSWD_FILE"))?;
        let mail_root = check_remote_dir(&config.mail_root).map_err(error("MAIL_ROOT"))?;
        let archive_dir = check_archive_dir(&config.archive_dir, &mail_root)
            .map_err(error("MAIL_ARCHIVE_DIR"))?;
        check_server_name(&config.server_name).map_err(error("MAIL_SERVER_NAME"))?;
        for (var, id) in [
            ("MAIL_VMAIL_UID", config.vmail_uid),
            ("MAIL_VMAIL_GID", config.vmail_gid),
        ] {
            if id == 0 {
                return Err(error(var)("must not be 0 (root)".into()));
            }
        }
        Ok(Self {
            config,
            passwd_file,
            mail_root,
            archive_dir,
        })
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &MailConfig {
        &self.config
    }

    /// A mailbox's address, the user name it logs in with.
    #[must_use]
    pub fn address(domain: &DomainName, localpart: &LocalPart) -> String {
        format!("{localpart}@{domain}")
    }

    /// Where a mailbox's Maildir is (Dovecot's `maildir:ROOT/%d/%n`; what the outcome records
    /// and the script must report).
    #[must_use]
    pub fn maildir(&self, domain: &DomainName, localpart: &LocalPart) -> String {
        format!("{}/{domain}/{localpart}", self.mail_root)
    }

    /// Converges one mailbox: its Maildir, and a passwd-file line — added with the hash of a
    /// fresh random password only when there is none, so an existing password is never reset.
    /// Returns the address and the Maildir.
    async fn ensure(
        &self,
        domain: &DomainName,
        localpart: &LocalPart,
    ) -> Result<(String, String), ProvisionError> {
        let args = vec![
            "ensure".to_owned(),
            self.passwd_file.clone(),
            self.mail_root.clone(),
            domain.to_string(),
            localpart.to_string(),
            self.config.vmail_uid.to_string(),
            self.config.vmail_gid.to_string(),
        ];
        let initial = random_password();
        let output = self
            .config
            .target
            .run_script(SCRIPT, &args, Some(password_line(&initial)))
            .await?;
        let line = CONTRACT.checked_last_line(&output)?;
        let address = Self::address(domain, localpart);
        let maildir = self.maildir(domain, localpart);
        if line != format!("OK {address} {maildir}") {
            return Err(CONTRACT.unexpected_output());
        }
        Ok((address, maildir))
    }

    /// Suspends (`suspend`) or unsuspends (`unsuspend`) one mailbox's logins; see the script.
    async fn change_login(
        &self,
        action: JobAction,
        domain: &DomainName,
        localpart: &LocalPart,
    ) -> Result<StepOutcome, ProvisionError> {
        let (verb, done) = match action {
            JobAction::Suspend => ("suspend", "SUSPENDED"),
            JobAction::Unsuspend => ("unsuspend", "UNSUSPENDED"),
            JobAction::Provision | JobAction::Terminate => {
                return Err(ProvisionError::Permanent(format!(
                    "{action} does not change a mailbox's logins"
                )))
            }
        };
        let args = vec![
            verb.to_owned(),
            self.passwd_file.clone(),
            domain.to_string(),
            localpart.to_string(),
        ];
        let output = self.config.target.run_script(SCRIPT, &args, None).await?;
        let line = CONTRACT.checked_last_line(&output)?;
        let address = Self::address(domain, localpart);
        if line != format!("{done} {address}") {
            return Err(CONTRACT.unexpected_output());
        }
        tracing::info!(mail_address = %address, "mailbox {verb}ed");
        Ok(StepOutcome::Changed {
            action,
            server: self.config.server_name.clone(),
            target: address,
            archived: None,
        })
    }

    /// Sets a mailbox's password (the customer's choice, or a reset). Converging: setting it
    /// again changes nothing that matters (a new salt). Dovecot picks the change up within
    /// about a second (it re-reads the passwd-file at most once per second).
    ///
    /// # Errors
    /// [`ProvisionError::Permanent`] when the password is unusable (8 to 128 bytes, no control
    /// characters) or the mailbox does not exist; transient for network or host trouble. The
    /// message never contains the password.
    #[tracing::instrument(
        name = "mail.set_password",
        skip_all,
        fields(domain = %domain, localpart = %localpart)
    )]
    pub async fn set_password(
        &self,
        domain: &DomainName,
        localpart: &LocalPart,
        password: &SecretString,
    ) -> Result<(), ProvisionError> {
        check_password(password)?;
        let args = vec![
            "set-password".to_owned(),
            self.passwd_file.clone(),
            domain.to_string(),
            localpart.to_string(),
        ];
        let output = self
            .config
            .target
            .run_script(SCRIPT, &args, Some(password_line(password)))
            .await?;
        let line = CONTRACT.checked_last_line(&output)?;
        if line != format!("PASSWORD_SET {}", Self::address(domain, localpart)) {
            return Err(CONTRACT.unexpected_output());
        }
        tracing::info!("mailbox password set");
        Ok(())
    }

    /// What of a mailbox is on the mail host.
    ///
    /// # Errors
    /// [`ProvisionError`]: permanent for SSH trust/auth problems or a host not set up as
    /// configured, transient for network trouble.
    #[tracing::instrument(
        name = "mail.mailbox_status",
        skip_all,
        fields(domain = %domain, localpart = %localpart)
    )]
    pub async fn mailbox_status(
        &self,
        domain: &DomainName,
        localpart: &LocalPart,
    ) -> Result<MailboxStatus, ProvisionError> {
        let args = vec![
            "status".to_owned(),
            self.passwd_file.clone(),
            self.mail_root.clone(),
            domain.to_string(),
            localpart.to_string(),
        ];
        let output = self.config.target.run_script(SCRIPT, &args, None).await?;
        let line = CONTRACT.checked_last_line(&output)?;
        let prefix = format!("STATUS {} ", Self::address(domain, localpart));
        let flag = |f: &str| match f {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(CONTRACT.unexpected_output()),
        };
        match line.strip_prefix(&prefix).map(str::split_whitespace) {
            Some(mut flags) => {
                let status = MailboxStatus {
                    in_passwd_file: flag(flags.next().unwrap_or_default())?,
                    maildir: flag(flags.next().unwrap_or_default())?,
                };
                if flags.next().is_some() {
                    return Err(CONTRACT.unexpected_output());
                }
                Ok(status)
            }
            None => Err(CONTRACT.unexpected_output()),
        }
    }

    /// Whether anything of the subscription's mailbox (`postmaster@DOMAIN`) is on the mail host —
    /// its passwd-file line or its Maildir: what a terminate step must still clean up, and what
    /// tests check after provisioning and removal.
    ///
    /// # Errors
    /// As [`SshMailProvisioner::mailbox_status`].
    pub async fn mailbox_exists(&self, domain: &DomainName) -> Result<bool, ProvisionError> {
        let status = self
            .mailbox_status(domain, &LocalPart::postmaster())
            .await?;
        Ok(status.in_passwd_file || status.maildir)
    }

    /// Takes a mailbox offline for termination (what [`JobAction::Terminate`] runs with the
    /// configured archive directory): deletes its passwd-file line (logins stop),
    /// then moves its Maildir to `archive_dir/LOCALPART@DOMAIN.<UTC time>` for the retention
    /// period. Idempotent: with nothing left it succeeds and returns `None`; otherwise it
    /// returns where the mail went. `archive_dir` should be on the mail root's filesystem (an
    /// atomic rename) and outside it.
    ///
    /// # Errors
    /// [`ProvisionError`]: permanent for a bad `archive_dir`, SSH trust/auth problems or a host
    /// not set up as configured; transient for network trouble or a failing host.
    #[tracing::instrument(
        name = "mail.remove_mailbox",
        skip_all,
        fields(domain = %domain, localpart = %localpart)
    )]
    pub async fn remove_mailbox(
        &self,
        domain: &DomainName,
        localpart: &LocalPart,
        archive_dir: &Path,
    ) -> Result<Option<String>, ProvisionError> {
        let archive_dir = check_archive_dir(archive_dir, &self.mail_root)
            .map_err(|e| ProvisionError::Permanent(format!("archive directory: {e}")))?;
        let args = vec![
            "remove".to_owned(),
            self.passwd_file.clone(),
            self.mail_root.clone(),
            domain.to_string(),
            localpart.to_string(),
            archive_dir.clone(),
        ];
        let output = self.config.target.run_script(SCRIPT, &args, None).await?;
        let line = CONTRACT.checked_last_line(&output)?;
        let prefix = format!("REMOVED {} ", Self::address(domain, localpart));
        match line.strip_prefix(&prefix) {
            Some("-") => Ok(None),
            Some(path) if path.starts_with(&format!("{archive_dir}/")) && !path.contains(' ') => {
                tracing::info!(archived = %path, "mailbox removed");
                Ok(Some(path.to_owned()))
            }
            _ => Err(CONTRACT.unexpected_output()),
        }
    }
}

#[async_trait]
impl Provisioner for SshMailProvisioner {
    async fn provision(&self, request: &ProvisionRequest) -> Result<StepOutcome, ProvisionError> {
        if request.step != ProvisioningStep::Mail {
            return Err(ProvisionError::Permanent(format!(
                "the mail provisioner cannot run a {} step",
                request.step
            )));
        }
        let domain = &request.domain;
        let postmaster = LocalPart::postmaster();
        match request.action {
            JobAction::Provision => {
                let (address, maildir) = self.ensure(domain, &postmaster).await?;
                tracing::info!(mail_address = %address, maildir = %maildir, "mailbox converged");
                Ok(StepOutcome::Mail {
                    address,
                    server: self.config.server_name.clone(),
                    maildir,
                })
            }
            action @ (JobAction::Suspend | JobAction::Unsuspend) => {
                self.change_login(action, domain, &postmaster).await
            }
            JobAction::Terminate => {
                let archive_dir = PathBuf::from(&self.archive_dir);
                let archived = self
                    .remove_mailbox(domain, &postmaster, &archive_dir)
                    .await?;
                Ok(StepOutcome::Changed {
                    action: JobAction::Terminate,
                    server: self.config.server_name.clone(),
                    target: Self::address(domain, &postmaster),
                    archived,
                })
            }
        }
    }
}

/// A password nobody knows, for a new mailbox until its owner sets one.
fn random_password() -> SecretString {
    let password: String = OsRng
        .sample_iter(&Alphanumeric)
        .take(INITIAL_PASSWORD_LEN)
        .map(char::from)
        .collect();
    SecretString::from(password)
}

/// The script's standard input for a password: the password and a newline.
fn password_line(password: &SecretString) -> Vec<u8> {
    let mut line = password.expose_secret().as_bytes().to_vec();
    line.push(b'\n');
    line
}

/// A password the script can hash exactly as given: one line (no control characters), long
/// enough, and short enough that `openssl passwd` does not cut it.
fn check_password(password: &SecretString) -> Result<(), ProvisionError> {
    let text = password.expose_secret();
    let usable = text.chars().count() >= MIN_PASSWORD_LEN
        && text.len() <= MAX_PASSWORD_BYTES
        && !text.chars().any(char::is_control);
    if usable {
        Ok(())
    } else {
        Err(ProvisionError::Permanent(format!(
            "a mailbox password must be {MIN_PASSWORD_LEN} characters to \
             {MAX_PASSWORD_BYTES} bytes long, without control characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::provisioners::ssh::Output;

    fn output(status: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            status,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    fn env() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("SSH_HOST", "127.0.0.1"),
            ("SSH_USER", "root"),
            ("SSH_KEY_PATH", "/k/id"),
            ("SSH_KNOWN_HOSTS", "/k/known_hosts"),
            ("MAIL_PASSWD_FILE", "/etc/dovecot/passwd"),
            ("MAIL_ROOT", "/var/vmail/"),
        ])
    }

    #[test]
    fn config_reads_defaults_and_names_bad_variables() {
        let mut env = env();
        let config = MailConfig::from_lookup(&env).expect("valid");
        assert_eq!(config.server_name, "mail1");
        assert_eq!((config.vmail_uid, config.vmail_gid), (5000, 5000));
        assert_eq!(config.archive_dir, PathBuf::from("/var/vmail-archive"));
        let provisioner = SshMailProvisioner::new(config).expect("valid");
        let domain = DomainName::parse("Example.com").expect("domain");
        assert_eq!(
            provisioner.maildir(&domain, &LocalPart::postmaster()),
            "/var/vmail/example.com/postmaster"
        );

        for (var, bad) in [
            ("MAIL_PASSWD_FILE", "passwd"),
            ("MAIL_ROOT", "/var/$(x)"),
            ("MAIL_SERVER_NAME", "mail 1"),
            ("MAIL_VMAIL_UID", "0"),
            ("MAIL_VMAIL_GID", "vmail"),
            ("MAIL_ARCHIVE_DIR", "archive"),
            ("MAIL_ARCHIVE_DIR", "/var/vmail"),
            ("MAIL_ARCHIVE_DIR", "/var/vmail/old"),
        ] {
            let mut env = env.clone();
            env.insert(var, bad);
            let error = MailConfig::from_lookup(&env).expect_err(var);
            assert_eq!(error.var, var);
        }
        env.remove("MAIL_ROOT");
        assert_eq!(
            MailConfig::from_lookup(&env).expect_err("missing").var,
            "MAIL_ROOT"
        );
    }

    #[test]
    fn local_parts_are_plain_and_lowercase() {
        assert_eq!(LocalPart::parse("Info").expect("ok").as_str(), "info");
        for good in ["a", "first.last", "x_y-z9", &"a".repeat(64)] {
            assert!(LocalPart::parse(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "-a",
            "a b",
            "a:b",
            "a@b",
            "a/b",
            "'",
            "é",
            &"a".repeat(65),
        ] {
            assert!(LocalPart::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_must_be_one_hashable_line() {
        let ok = SecretString::from("correct horse battery".to_owned());
        assert!(check_password(&ok).is_ok());
        for bad in [
            "short".to_owned(),
            "line\nbreak here".to_owned(),
            "nul\0inside it".to_owned(),
            "x".repeat(MAX_PASSWORD_BYTES + 1),
        ] {
            let error = check_password(&SecretString::from(bad.clone())).expect_err("refused");
            assert!(matches!(error, ProvisionError::Permanent(_)));
            assert!(!error.to_string().contains(&bad));
        }
    }

    #[test]
    fn random_passwords_are_long_plain_and_different() {
        let a = random_password();
        let b = random_password();
        assert_eq!(a.expose_secret().len(), INITIAL_PASSWORD_LEN);
        assert!(a.expose_secret().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(check_password(&a).is_ok());
        assert!(!format!("{a:?}").contains(a.expose_secret()));
        assert_eq!(password_line(&a).last(), Some(&b'\n'));
    }

    #[test]
    fn exit_statuses_map_to_the_retry_policy() {
        for status in PERMANENT_EXIT_STATUSES {
            assert!(matches!(
                CONTRACT.checked_last_line(&output(status, "", "mpanel-mail: no\n")),
                Err(ProvisionError::Permanent(_))
            ));
        }
        assert_eq!(
            CONTRACT.checked_last_line(&output(75, "", "mpanel-mail: /p.lock is busy\n")),
            Err(ProvisionError::Transient(
                "mail script exited with status 75: mpanel-mail: /p.lock is busy".into()
            ))
        );
        assert!(matches!(
            CONTRACT.checked_last_line(&output(1, "", "")),
            Err(ProvisionError::Transient(_))
        ));
    }

    #[test]
    fn output_must_come_from_this_script_version() {
        let good = output(0, "MPANEL_MAIL_SCRIPT_VERSION=3\nOK a b\n", "");
        assert_eq!(CONTRACT.checked_last_line(&good), Ok("OK a b"));
        for stdout in ["OK a b\n", "MPANEL_MAIL_SCRIPT_VERSION=2\nOK a b\n", ""] {
            assert!(
                CONTRACT.checked_last_line(&output(0, stdout, "")).is_err(),
                "{stdout:?}"
            );
        }
    }

    #[test]
    fn embedded_script_announces_the_version_the_code_expects() {
        assert!(SCRIPT.contains(&format!("\nMPANEL_MAIL_SCRIPT_VERSION={SCRIPT_VERSION}\n")));
    }
}
