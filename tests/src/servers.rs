//! The stack's real servers as tests reach them directly: an IMAP login against Dovecot, the
//! PowerDNS API, and an SSH proxy a test can take down without touching the shared sshd.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

use mpanel_adapters::provisioners::ssh::SshTarget;
use uuid::Uuid;

use crate::proxy::TcpProxy;

/// The stack's setting `var` (`POWERDNS_API_URL`, `HOSTING_ROOT`, …), as `scripts/test.sh`
/// exports it.
///
/// # Panics
/// When it is not set.
#[must_use]
pub fn env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} must be set; run the suite with scripts/test.sh"))
}

/// One IMAP LOGIN against the stack's Dovecot; the tagged answer line (`a1 OK …` / `a1 NO …`).
///
/// # Panics
/// When Dovecot cannot be reached or hangs up.
#[must_use]
pub fn imap_login(user: &str, password: &str) -> String {
    let port: u16 = env("MAIL_IMAP_PORT").parse().expect("MAIL_IMAP_PORT");
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("IMAP port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    write!(writer, "a1 LOGIN \"{user}\" \"{password}\"\r\n").expect("LOGIN");
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("answer") > 0,
            "Dovecot hung up"
        );
        if line.starts_with("a1 ") {
            let _ = writer.write_all(b"a2 LOGOUT\r\n");
            return line.trim_end().to_owned();
        }
    }
}

fn zone_url(domain: &str) -> String {
    format!(
        "{}/api/v1/servers/localhost/zones/{domain}.",
        env("POWERDNS_API_URL").trim_end_matches('/')
    )
}

/// The zone of `domain` as the PowerDNS API shows it, `None` when there is none.
///
/// # Panics
/// When the API cannot be reached or answers an error other than "no such zone".
pub async fn zone(domain: &str) -> Option<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(zone_url(domain))
        .header("X-API-Key", env("POWERDNS_API_KEY"))
        .send()
        .await
        .expect("PowerDNS API");
    match r.status().as_u16() {
        200 => Some(r.json().await.expect("zone JSON")),
        404 | 422 => None,
        other => panic!("PowerDNS answered {other}"),
    }
}

/// Deletes the zone of `domain` (best effort: test clean-up, or drift a test makes on purpose).
pub async fn delete_zone(domain: &str) {
    let _ = reqwest::Client::new()
        .delete(zone_url(domain))
        .header("X-API-Key", env("POWERDNS_API_KEY"))
        .send()
        .await;
}

/// A [`TcpProxy`] in front of the stack's PowerDNS API (initially down), and the
/// `POWERDNS_API_URL` that makes an app reach PowerDNS through it.
#[must_use]
pub fn powerdns_proxy() -> (TcpProxy, String) {
    let api = env("POWERDNS_API_URL");
    let proxy = TcpProxy::new(api.trim_start_matches("http://").trim_end_matches('/'));
    let url = format!("http://127.0.0.1:{}", proxy.port);
    (proxy, url)
}

/// A [`TcpProxy`] in front of the stack's sshd, with a known_hosts file naming the proxy's port
/// (host keys are checked per port). Pass [`SshProxy::env`] to the app; take the proxy down to
/// make the SSH host refuse connections.
pub struct SshProxy {
    /// The proxy (initially down).
    pub proxy: TcpProxy,
    dir: PathBuf,
    known_hosts: PathBuf,
    port: String,
}

impl SshProxy {
    /// A proxy to the stack's sshd, initially down.
    ///
    /// # Panics
    /// When the stack's known_hosts cannot be read or the copy written.
    #[must_use]
    pub fn new() -> Self {
        let proxy = TcpProxy::new(&format!("127.0.0.1:{}", env("SSH_PORT")));
        let dir =
            std::env::temp_dir().join(format!("mpanel-ssh-proxy-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let known_hosts = dir.join("known_hosts");
        let original = std::fs::read_to_string(env("SSH_KNOWN_HOSTS")).expect("known_hosts");
        std::fs::write(
            &known_hosts,
            original.replace(
                &format!("[127.0.0.1]:{}", env("SSH_PORT")),
                &format!("[127.0.0.1]:{}", proxy.port),
            ),
        )
        .expect("write known_hosts");
        let port = proxy.port.to_string();
        Self {
            proxy,
            dir,
            known_hosts,
            port,
        }
    }

    /// The stack's SSH host as reached through the proxy (its port, this known_hosts file).
    #[must_use]
    pub fn target(&self) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".into(),
            port: self.proxy.port,
            user: env("SSH_USER"),
            key_path: PathBuf::from(env("SSH_KEY_PATH")),
            known_hosts_path: self.known_hosts.clone(),
        }
    }

    /// `SSH_PORT` and `SSH_KNOWN_HOSTS` for an app that should reach its hosts through the proxy.
    ///
    /// # Panics
    /// When the temp path is not UTF-8.
    #[must_use]
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("SSH_PORT", self.port.as_str()),
            (
                "SSH_KNOWN_HOSTS",
                self.known_hosts.to_str().expect("utf-8 path"),
            ),
        ]
    }
}

impl Default for SshProxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
