//! Running a provisioning script on a remote server over SSH (DESIGN §4), shared by the hosting
//! and mail provisioners.
//!
//! Why it looks the way it does:
//! - ssh2 (libssh2) is blocking, so every session runs in [`tokio::task::spawn_blocking`] with the
//!   caller's tracing span carried in; a slow server never stalls the runtime's workers.
//! - The server's host key is always checked against a known_hosts file we are given; an unknown
//!   or changed key is refused. Provisioning writes files as root on that host, so talking to the
//!   wrong machine must be impossible, not merely logged.
//! - The script travels as one single-quoted argument of `sh -c`, and every argument after it is
//!   single-quoted by [`shell_quote`]: the remote login shell sees only literal strings, whatever
//!   they contain. Standard input stays free for data that must not appear in a process list
//!   (a password hash), because arguments are visible to `ps` on the remote host.
//! - Authenticated sessions are kept open between scripts (per target, a few, for 30 s) and a
//!   script runs on a fresh channel of one: the handshake costs far more than the script.
//! - Failures are sorted into "worth retrying" (network, timeouts) and "retrying cannot help"
//!   (host key, authentication, configuration), which is what the job's retry policy needs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ssh2::{CheckResult, KnownHostFileKind, Session};

use super::ProvisionError;
use crate::config::{Env, Lookup};

/// How long a TCP connect may take before the server counts as unreachable (a retry may help).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long any single blocking SSH operation (handshake, auth, read) may wait. A remote script
/// that produces no output for this long is treated as hung.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest script [`SshTarget::run_script`] sends: it travels inside the SSH exec request,
/// whose size servers limit; ours are a few KiB.
pub const MAX_SCRIPT_LEN: usize = 64 * 1024;

/// Why a remote server's SSH settings in the environment are unusable; names the variable so an
/// operator can fix it without reading code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ProvisionerConfigError {
    /// The environment variable (or variables, when one falls back to another).
    pub var: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Where and as whom to run provisioning scripts. Each provisioner has its own server (web, mail)
/// but they usually share a key and known_hosts file, hence the prefixed/generic variables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshTarget {
    /// Host name or IP address; also the name looked up in the known_hosts file.
    pub host: String,
    /// TCP port (entries for a port other than 22 are written `[host]:port` in known_hosts).
    pub port: u16,
    /// Remote user name.
    pub user: String,
    /// Private key file for public-key authentication (no passphrase; the path is logged, never
    /// the key).
    pub key_path: PathBuf,
    /// OpenSSH known_hosts file holding the server's host key.
    pub known_hosts_path: PathBuf,
}

/// What a remote script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Its exit status.
    pub status: i32,
    /// Its standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Its standard error (invalid UTF-8 replaced).
    pub stderr: String,
}

impl Output {
    /// Whether the script exited with status 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Why a remote script could not be run. Messages name the host, user and file paths, never key
/// material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// A value cannot be passed to a remote shell safely (NUL byte, oversized script, bad host).
    #[error("invalid input for the remote shell: {0}")]
    InvalidInput(String),
    /// The host name did not resolve.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// `host:port`.
        addr: String,
        /// The resolver's complaint.
        reason: String,
    },
    /// TCP connect refused, timed out or otherwise failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The socket error.
        reason: String,
    },
    /// The SSH handshake failed (not an SSH server, connection dropped, no common algorithm).
    #[error("SSH handshake with {addr} failed: {reason}")]
    Handshake {
        /// `host:port`.
        addr: String,
        /// libssh2's message.
        reason: String,
    },
    /// The known_hosts file could not be read.
    #[error("cannot read known hosts file {path}: {reason}")]
    KnownHostsFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The server's host key is not the one in known_hosts: possibly another machine.
    #[error("host key of {addr} does not match {path}; refusing to connect")]
    HostKeyMismatch {
        /// `host:port`.
        addr: String,
        /// The known_hosts file.
        path: String,
    },
    /// The server has no entry in known_hosts; we never trust on first use.
    #[error("host key of {addr} is not in {path}; refusing to connect")]
    HostKeyUnknown {
        /// `host:port`.
        addr: String,
        /// The known_hosts file.
        path: String,
    },
    /// Public-key authentication was refused or the key file is unusable.
    #[error("public key authentication as {user} on {addr} failed: {reason}")]
    Auth {
        /// Remote user.
        user: String,
        /// `host:port`.
        addr: String,
        /// Why (never key material).
        reason: String,
    },
    /// The session broke or timed out while the script ran.
    #[error("running the remote script on {addr} failed: {reason}")]
    Session {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The blocking task died (a bug, not a server problem).
    #[error("internal error running an SSH session: {0}")]
    Internal(String),
}

impl SshError {
    /// Whether running the same script again later may succeed. Network trouble is transient;
    /// trust, authentication and input problems need an operator.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Resolve { .. }
                | Self::Connect { .. }
                | Self::Handshake { .. }
                | Self::Session { .. }
        )
    }
}

impl From<SshError> for ProvisionError {
    fn from(error: SshError) -> Self {
        if error.is_transient() {
            Self::Transient(error.to_string())
        } else {
            Self::Permanent(error.to_string())
        }
    }
}

/// Quotes one argument for a POSIX shell: the result is a single word that the shell turns back
/// into exactly `arg`, whatever it contains (`'`, `$(…)`, backquotes, newlines, globs).
///
/// # Errors
/// [`SshError::InvalidInput`] when `arg` contains a NUL byte, which no shell word can carry (it
/// would silently truncate the argument).
pub fn shell_quote(arg: &str) -> Result<String, SshError> {
    if arg.contains('\0') {
        return Err(SshError::InvalidInput(
            "an argument contains a NUL byte".into(),
        ));
    }
    let mut quoted = String::with_capacity(arg.len() + 2);
    quoted.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            // Close the quote, add an escaped quote, reopen.
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    Ok(quoted)
}

/// The command line sent in the SSH exec request: `sh -c '<script>' mpanel-script '<arg>'…`.
/// `$0` is a fixed name so the script's own error messages say where they come from.
fn command_line(script: &str, args: &[String]) -> Result<String, SshError> {
    if script.len() > MAX_SCRIPT_LEN {
        return Err(SshError::InvalidInput(format!(
            "the script is {} bytes, more than {MAX_SCRIPT_LEN}",
            script.len()
        )));
    }
    let mut command = format!("sh -c {} mpanel-script", shell_quote(script)?);
    for arg in args {
        command.push(' ');
        command.push_str(&shell_quote(arg)?);
    }
    Ok(command)
}

fn env_with_fallback(env: &impl Lookup, prefix: &str, name: &str) -> (String, Option<String>) {
    let specific = format!("{prefix}{name}");
    let label = if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{specific} (or {name})")
    };
    let value = env.get(&specific).or_else(|| env.get(name));
    (label, value)
}

impl SshTarget {
    /// Reads the target from the environment: `{prefix}SSH_HOST`, `{prefix}SSH_PORT` (default
    /// 22), `{prefix}SSH_USER`, `{prefix}SSH_KEY_PATH`, `{prefix}SSH_KNOWN_HOSTS`, each falling
    /// back to the variable without the prefix, so one key and known_hosts file can serve every
    /// server while each provisioner may still point at its own.
    ///
    /// # Errors
    /// [`ProvisionerConfigError`] naming the first missing or invalid variable.
    pub fn from_env(prefix: &str) -> Result<Self, ProvisionerConfigError> {
        Self::from_lookup(&Env, prefix)
    }

    /// [`SshTarget::from_env`] over any variable source (a map in tests).
    ///
    /// # Errors
    /// [`ProvisionerConfigError`] naming the first missing or invalid variable.
    pub fn from_lookup(env: &impl Lookup, prefix: &str) -> Result<Self, ProvisionerConfigError> {
        let required = |name: &str| {
            let (var, value) = env_with_fallback(env, prefix, name);
            value.ok_or_else(|| ProvisionerConfigError {
                var,
                reason: "must be set".into(),
            })
        };
        let host = required("SSH_HOST")?;
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let (var, _) = env_with_fallback(env, prefix, "SSH_HOST");
            return Err(ProvisionerConfigError {
                var,
                reason: "must not contain whitespace or control characters".into(),
            });
        }
        let (port_var, port) = env_with_fallback(env, prefix, "SSH_PORT");
        let port = match port {
            None => 22,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => {
                    return Err(ProvisionerConfigError {
                        var: port_var,
                        reason: format!("{p:?} is not a TCP port (1-65535)"),
                    })
                }
            },
        };
        let user = required("SSH_USER")?;
        let key_path = PathBuf::from(required("SSH_KEY_PATH")?);
        let known_hosts_path = PathBuf::from(required("SSH_KNOWN_HOSTS")?);
        Ok(Self {
            host,
            port,
            user,
            key_path,
            known_hosts_path,
        })
    }

    /// `host:port`, as used in messages.
    #[must_use]
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Runs `script` with `sh` on the target as `sh -c SCRIPT mpanel-script ARGS…` (every value
    /// single-quoted), feeding `stdin` (or nothing) to its standard input, and returns its exit
    /// status and output. A non-zero exit status is returned as an [`Output`], not an error: what
    /// it means is the caller's business.
    ///
    /// # Errors
    /// [`SshError`]; [`SshError::is_transient`] tells whether a retry may help. The host key is
    /// verified before authenticating; an unknown or changed key is refused.
    pub async fn run_script(
        &self,
        script: &str,
        args: &[String],
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, SshError> {
        let command = command_line(script, args)?;
        let target = self.clone();
        // The one span of the run: a child of the caller's (the provisioner call's), entered on
        // the blocking thread.
        let span = tracing::info_span!(
            "ssh.run_script",
            host = %self.host,
            port = self.port,
            user = %self.user,
        );
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            run_blocking(&target, &command, stdin.as_deref())
        })
        .await
        .map_err(|e| SshError::Internal(format!("the SSH task did not finish: {e}")))?
    }
}

fn connect(target: &SshTarget, addr: &str) -> Result<TcpStream, SshError> {
    let candidates: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| SshError::Resolve {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .collect();
    let mut last_error = format!("{} resolved to no address", target.host);
    for candidate in candidates {
        match TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = format!("{candidate}: {e}"),
        }
    }
    Err(SshError::Connect {
        addr: addr.to_owned(),
        reason: last_error,
    })
}

fn verify_host_key(session: &Session, target: &SshTarget, addr: &str) -> Result<(), SshError> {
    let path = target.known_hosts_path.display().to_string();
    let file_error = |reason: String| SshError::KnownHostsFile {
        path: path.clone(),
        reason,
    };
    if !target.known_hosts_path.is_file() {
        return Err(file_error("no such file".into()));
    }
    let mut known_hosts = session
        .known_hosts()
        .map_err(|e| file_error(e.message().to_owned()))?;
    known_hosts
        .read_file(&target.known_hosts_path, KnownHostFileKind::OpenSSH)
        .map_err(|e| file_error(e.message().to_owned()))?;
    let (key, _key_type) = session.host_key().ok_or_else(|| SshError::Handshake {
        addr: addr.to_owned(),
        reason: "the server sent no host key".into(),
    })?;
    match known_hosts.check_port(&target.host, target.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(SshError::HostKeyMismatch {
            addr: addr.to_owned(),
            path,
        }),
        CheckResult::NotFound | CheckResult::Failure => Err(SshError::HostKeyUnknown {
            addr: addr.to_owned(),
            path,
        }),
    }
}

fn authenticate(session: &Session, target: &SshTarget, addr: &str) -> Result<(), SshError> {
    let auth_error = |reason: String| SshError::Auth {
        user: target.user.clone(),
        addr: addr.to_owned(),
        reason,
    };
    if !target.key_path.is_file() {
        return Err(auth_error(format!(
            "private key file {} does not exist",
            target.key_path.display()
        )));
    }
    session
        .userauth_pubkey_file(&target.user, None, &target.key_path, None)
        .map_err(|e| auth_error(e.message().to_owned()))?;
    if session.authenticated() {
        Ok(())
    } else {
        Err(auth_error("the server did not accept the key".into()))
    }
}

/// How many authenticated sessions to one target stay open between scripts.
const IDLE_PER_TARGET: usize = 8;

/// How long an idle session is kept: well under any server's idle timeout, so a kept session
/// is almost always still open (one that is not costs a reconnect, not a failure).
const IDLE_TTL: Duration = Duration::from_secs(30);

/// An authenticated session waiting for its next script.
struct Idle {
    session: Session,
    since: Instant,
}

/// Authenticated sessions kept open between scripts, per target. Opening one costs an SSH
/// handshake, host-key check and authentication — about 200 ms of wall time and most of the
/// server's CPU for a provisioning job (a fork and key exchange per connection) — while a
/// script itself takes tens of milliseconds, so reusing them is what lets a server keep up
/// with a burst of orders (docs/benchmarks.md). A session is only ever reused for the exact
/// target (host, port, user, key and known_hosts file) it was verified and authenticated for.
static IDLE: LazyLock<Mutex<HashMap<SshTarget, Vec<Idle>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// An idle session for `target` that has not outlived [`IDLE_TTL`], if any.
fn take_idle(target: &SshTarget) -> Option<Session> {
    let mut idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner);
    let sessions = idle.get_mut(target)?;
    sessions.retain(|i| i.since.elapsed() < IDLE_TTL);
    sessions.pop().map(|i| i.session)
}

/// Keeps `session` for the next script to `target`, unless enough are kept already.
fn keep_idle(target: &SshTarget, session: Session) {
    let mut idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner);
    let sessions = idle.entry(target.clone()).or_default();
    sessions.retain(|i| i.since.elapsed() < IDLE_TTL);
    if sessions.len() < IDLE_PER_TARGET {
        sessions.push(Idle {
            session,
            since: Instant::now(),
        });
    }
}

/// Connects, checks the host key and authenticates: a session ready for channels.
fn open_session(target: &SshTarget, addr: &str) -> Result<Session, SshError> {
    let tcp = connect(target, addr)?;
    let handshake_error = |e: ssh2::Error| SshError::Handshake {
        addr: addr.to_owned(),
        reason: e.message().to_owned(),
    };
    let mut session = Session::new().map_err(handshake_error)?;
    session.set_timeout(u32::try_from(SESSION_TIMEOUT.as_millis()).unwrap_or(u32::MAX));
    session.set_tcp_stream(tcp);
    session.handshake().map_err(handshake_error)?;
    verify_host_key(&session, target, addr)?;
    authenticate(&session, target, addr)?;
    tracing::debug!("ssh session authenticated");
    Ok(session)
}

fn run_blocking(
    target: &SshTarget,
    command: &str,
    stdin: Option<&[u8]>,
) -> Result<Output, SshError> {
    let addr = target.address();
    if target.host.is_empty() || target.host.contains('\0') {
        return Err(SshError::InvalidInput(
            "the host name is empty or contains a NUL byte".into(),
        ));
    }
    let started = Instant::now();
    let session_error = |doing: &str, reason: String| SshError::Session {
        addr: addr.clone(),
        reason: format!("{doing}: {reason}"),
    };
    // A kept session the server has closed since fails to open a channel, before anything ran:
    // it is dropped and a fresh one opened.
    let kept = take_idle(target).and_then(|session| {
        let channel = session.channel_session().ok()?;
        Some((session, channel))
    });
    let reused = kept.is_some();
    let (session, mut channel) = match kept {
        Some(kept) => kept,
        None => {
            let session = open_session(target, &addr)?;
            let channel = session
                .channel_session()
                .map_err(|e| session_error("opening a channel", e.message().to_owned()))?;
            (session, channel)
        }
    };
    channel
        .exec(command)
        .map_err(|e| session_error("starting the script", e.message().to_owned()))?;
    if let Some(data) = stdin {
        channel
            .write_all(data)
            .map_err(|e| session_error("writing standard input", e.to_string()))?;
    }
    channel
        .send_eof()
        .map_err(|e| session_error("closing standard input", e.message().to_owned()))?;
    // Both streams share the channel window (2 MiB); our scripts print a few lines, so reading
    // them one after the other cannot stall.
    let mut stdout = Vec::new();
    channel
        .read_to_end(&mut stdout)
        .map_err(|e| session_error("reading standard output", e.to_string()))?;
    let mut stderr = Vec::new();
    channel
        .stderr()
        .read_to_end(&mut stderr)
        .map_err(|e| session_error("reading standard error", e.to_string()))?;
    channel
        .wait_close()
        .map_err(|e| session_error("closing the channel", e.message().to_owned()))?;
    if let Ok(signal) = channel.exit_signal() {
        if let Some(name) = signal.exit_signal {
            return Err(session_error(
                "the script",
                format!("killed by signal {name}"),
            ));
        }
    }
    let status = channel
        .exit_status()
        .map_err(|e| session_error("reading the exit status", e.message().to_owned()))?;
    // The session did its job cleanly: keep it for the next script (a session that failed
    // anywhere above is dropped, and its connection with it).
    drop(channel);
    keep_idle(target, session);
    tracing::info!(
        exit_status = status,
        reused_session = reused,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "remote script finished"
    );
    Ok(Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// How a provisioner judges a run of its script: which exit statuses mean retrying cannot help,
/// and which version line the output must start with to be trusted at all.
#[derive(Debug)]
pub struct ScriptContract {
    /// The script's name in failure messages (`hosting`, `mail`).
    pub name: &'static str,
    /// The variable the script's first output line sets (`MPANEL_HOSTING_SCRIPT_VERSION`).
    pub version_var: &'static str,
    /// The version the embedded script announces.
    pub version: u32,
    /// Exit statuses after which retrying cannot help; any other failure is transient.
    pub permanent_exit_statuses: &'static [i32],
}

impl ScriptContract {
    /// The error for output that this version of the script does not print.
    #[must_use]
    pub fn unexpected_output(&self) -> ProvisionError {
        ProvisionError::Permanent(format!(
            "the {} script's output is not what version {} prints",
            self.name, self.version
        ))
    }

    /// Turns the script's exit status into an error, checks that the output is from this
    /// script's version, and returns its last line.
    ///
    /// # Errors
    /// [`ProvisionError`] for a failed run (permanent for the listed statuses) and for output
    /// that is not this version's ([`ScriptContract::unexpected_output`]).
    pub fn checked_last_line<'a>(&self, output: &'a Output) -> Result<&'a str, ProvisionError> {
        if !output.success() {
            let message = format!(
                "{} script exited with status {}: {}",
                self.name,
                output.status,
                stderr_summary(&output.stderr)
            );
            return Err(if self.permanent_exit_statuses.contains(&output.status) {
                ProvisionError::Permanent(message)
            } else {
                ProvisionError::Transient(message)
            });
        }
        let version_line = format!("{}={}", self.version_var, self.version);
        let mut lines = output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty());
        if lines.next() != Some(version_line.as_str()) {
            return Err(self.unexpected_output());
        }
        lines.next_back().ok_or_else(|| self.unexpected_output())
    }
}

/// The last line of a script's stderr, printable and short, for the job's failure message.
/// (The scripts never print a secret, and the hashing tools' own output is not passed on.)
fn stderr_summary(stderr: &str) -> String {
    let last = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(no error output)");
    last.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// Checks a server's display name (recorded in job outcomes and read models): 1–64 letters,
/// digits, `.`, `_` or `-`, so it is safe in logs, JSON and file names alike.
///
/// # Errors
/// The rule that failed.
pub fn check_server_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        Ok(())
    } else {
        Err("must be 1-64 letters, digits, '.', '_' or '-'".into())
    }
}

/// Checks that a remote directory given by an operator is safe to hand to our scripts: absolute,
/// not `/`, and made only of `[A-Za-z0-9._/-]` (it also ends up in web server configuration,
/// where spaces or quotes would need another layer of escaping).
///
/// # Errors
/// The reason, for a [`ProvisionerConfigError`] or a permanent failure.
pub fn check_remote_dir(path: &Path) -> Result<String, String> {
    let Some(text) = path.to_str() else {
        return Err("must be valid UTF-8".into());
    };
    if !text.starts_with('/') {
        return Err(format!("{text:?} must be an absolute path"));
    }
    if text.trim_end_matches('/').is_empty() {
        return Err("must not be the root directory".into());
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err(format!(
            "{text:?} may contain only letters, digits, '.', '_', '-' and '/'"
        ));
    }
    if text.split('/').any(|part| part == "..") {
        return Err(format!("{text:?} must not contain '..'"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::process::Command;

    use super::*;

    /// What a local `sh` makes of a quoted word: proves the quoting round-trips.
    fn through_sh(arg: &str) -> String {
        let word = shell_quote(arg).expect("quotable");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' {word}"))
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "sh failed for {word}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    #[test]
    fn plain_words_are_single_quoted() {
        assert_eq!(shell_quote("example.com").expect("ok"), "'example.com'");
        assert_eq!(shell_quote("").expect("ok"), "''");
    }

    #[test]
    fn single_quote_is_closed_escaped_and_reopened() {
        assert_eq!(shell_quote("it's").expect("ok"), r"'it'\''s'");
        assert_eq!(shell_quote("'").expect("ok"), r"''\'''");
    }

    #[test]
    fn hostile_strings_survive_a_real_shell_unchanged() {
        for hostile in [
            "it's",
            "'; rm -rf / #",
            "$(touch /tmp/mpanel-pwned)",
            "`id`",
            "${HOME}",
            "line1\nline2\n",
            "a\\b\\'c",
            "* ? [a-z]",
            "--option",
            "-",
            "tab\there",
            "\"double\"",
            "ünïcödé 日本",
            "",
        ] {
            assert_eq!(through_sh(hostile), hostile, "for {hostile:?}");
        }
        assert!(!Path::new("/tmp/mpanel-pwned").exists());
    }

    #[test]
    fn nul_byte_is_refused() {
        let error = shell_quote("a\0b").expect_err("an error");
        assert!(matches!(error, SshError::InvalidInput(_)));
        assert!(!error.is_transient());
    }

    #[test]
    fn command_line_quotes_script_and_every_argument() {
        let command = command_line("echo \"$1\"", &["a b".into(), "$(x)".into()]).expect("ok");
        assert_eq!(command, r#"sh -c 'echo "$1"' mpanel-script 'a b' '$(x)'"#);
        let out = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .expect("ok");
        assert_eq!(String::from_utf8(out.stdout).expect("ok"), "a b\n");
    }

    #[test]
    fn command_line_refuses_nul_in_args_and_huge_scripts() {
        assert!(command_line("true", &["x\0".into()]).is_err());
        assert!(command_line(&"#".repeat(MAX_SCRIPT_LEN + 1), &[]).is_err());
    }

    #[test]
    fn prefixed_variables_win_and_generic_ones_fill_in() {
        let env = HashMap::from([
            ("HOSTING_SSH_HOST", "web1.internal"),
            ("SSH_HOST", "generic"),
            ("SSH_PORT", "2222"),
            ("SSH_USER", "root"),
            ("SSH_KEY_PATH", "/keys/id"),
            ("SSH_KNOWN_HOSTS", "/keys/known_hosts"),
        ]);
        let target = SshTarget::from_lookup(&env, "HOSTING_").expect("ok");
        assert_eq!(target.host, "web1.internal");
        assert_eq!(target.port, 2222);
        assert_eq!(target.user, "root");
        assert_eq!(target.key_path, PathBuf::from("/keys/id"));
        assert_eq!(target.address(), "web1.internal:2222");
    }

    #[test]
    fn errors_name_the_variable() {
        let env = HashMap::from([("SSH_HOST", "h"), ("SSH_USER", "root")]);
        let error = SshTarget::from_lookup(&env, "MAIL_").expect_err("an error");
        assert_eq!(error.var, "MAIL_SSH_KEY_PATH (or SSH_KEY_PATH)");
        let env = HashMap::from([("SSH_HOST", "h"), ("SSH_PORT", "0")]);
        let error = SshTarget::from_lookup(&env, "").expect_err("an error");
        assert_eq!(error.var, "SSH_PORT");
    }

    #[test]
    fn error_classes_match_the_retry_policy() {
        let addr = "h:22".to_owned();
        assert!(SshError::Connect {
            addr: addr.clone(),
            reason: "refused".into()
        }
        .is_transient());
        assert!(!SshError::HostKeyMismatch {
            addr: addr.clone(),
            path: "k".into()
        }
        .is_transient());
        assert!(matches!(
            ProvisionError::from(SshError::Auth {
                user: "root".into(),
                addr,
                reason: "no".into()
            }),
            ProvisionError::Permanent(_)
        ));
    }

    #[test]
    fn remote_dirs_must_be_absolute_and_plain() {
        assert_eq!(
            check_remote_dir(Path::new("/srv/www/")).expect("ok"),
            "/srv/www"
        );
        for bad in [
            "srv",
            "",
            "/",
            "//",
            "/srv/my www",
            "/srv/$(x)",
            "/srv/../etc",
        ] {
            assert!(check_remote_dir(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
