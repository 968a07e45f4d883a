//! The mail provisioner against the real local sshd and Dovecot (scripts/test.sh starts them and
//! exports `SSH_*`, `MAIL_IMAP_PORT`, `MAIL_PASSWD_FILE` and `MAIL_ROOT` from
//! `.stack/stack.env`). Both run on this machine, so what the remote script did is checked
//! straight on the filesystem, and the proof that a mailbox works is an IMAP login.
//!
//! Tests share Dovecot's one passwd-file (that is where the lock matters), each with its own
//! `t-<uuid>.example.net` domain, and remove their mailboxes at the end — through the
//! provisioner, and again (locally, by the same script) when a test fails half-way.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mpanel_adapters::provisioners::mail::{
    LocalPart, MailConfig, MailboxStatus, SshMailProvisioner, SCRIPT,
};
use mpanel_adapters::provisioners::{ProvisionError, ProvisionRequest, Provisioner};
use mpanel_domain::job::{JobAction, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::DomainName;
use secrecy::SecretString;
use uuid::Uuid;

const REQUIRED_ENV: [&str; 8] = [
    "SSH_HOST",
    "SSH_PORT",
    "SSH_USER",
    "SSH_KEY_PATH",
    "SSH_KNOWN_HOSTS",
    "MAIL_IMAP_PORT",
    "MAIL_PASSWD_FILE",
    "MAIL_ROOT",
];

/// How long Dovecot may take to see a passwd-file change (it re-reads at most once a second).
const LOGIN_RETRY: Duration = Duration::from_secs(4);

/// Fails (never skips) when the stack's environment is missing.
fn require_env() {
    let missing: Vec<&str> = REQUIRED_ENV
        .into_iter()
        .filter(|var| std::env::var(var).map_or(true, |v| v.is_empty()))
        .collect();
    assert!(
        missing.is_empty(),
        "missing environment {missing:?}: these tests need the local sshd and Dovecot; run them \
         through scripts/test.sh, or `set -a && source .stack/stack.env && set +a` after \
         scripts/stack.sh"
    );
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set (checked by require_env)"))
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

/// One test's mailbox on the real mail host.
struct Fixture {
    domain: DomainName,
    provisioner: SshMailProvisioner,
    archive: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        Self::with_config(|_| {})
    }

    fn with_config(adjust: impl FnOnce(&mut MailConfig)) -> Self {
        require_env();
        let id = Uuid::new_v4().simple().to_string();
        let mut config = MailConfig::from_env().expect("mail configuration from the env");
        adjust(&mut config);
        let domain = DomainName::parse(&format!("t-{}.example.net", &id[..12])).expect("domain");
        let archive = config
            .mail_root
            .parent()
            .expect("MAIL_ROOT has a parent")
            .join("mail-archive-tests")
            .join(&id);
        config.archive_dir.clone_from(&archive);
        Self {
            domain,
            provisioner: SshMailProvisioner::new(config).expect("valid configuration"),
            archive,
        }
    }

    fn request(&self) -> ProvisionRequest {
        self.request_for(JobAction::Provision)
    }

    fn request_for(&self, action: JobAction) -> ProvisionRequest {
        ProvisionRequest {
            job_id: Uuid::new_v4(),
            subscription_id: Uuid::new_v4(),
            step: ProvisioningStep::Mail,
            domain: self.domain.clone(),
            action,
        }
    }

    async fn run(&self, action: JobAction) -> Result<StepOutcome, ProvisionError> {
        self.provisioner.provision(&self.request_for(action)).await
    }

    fn changed(&self, action: JobAction, archived: Option<String>) -> StepOutcome {
        StepOutcome::Changed {
            action,
            server: "mail1".into(),
            target: self.address(),
            archived,
        }
    }

    fn address(&self) -> String {
        format!("postmaster@{}", self.domain)
    }

    fn passwd_file(&self) -> &Path {
        &self.provisioner.config().passwd_file
    }

    fn maildir(&self) -> PathBuf {
        self.provisioner
            .config()
            .mail_root
            .join(self.domain.as_str())
            .join("postmaster")
    }

    fn expected_outcome(&self) -> StepOutcome {
        StepOutcome::Mail {
            address: self.address(),
            server: "mail1".into(),
            maildir: self.maildir().display().to_string(),
        }
    }

    /// The passwd-file's lines for this test's address.
    fn passwd_lines(&self) -> Vec<String> {
        passwd_lines_for(self.passwd_file(), &self.address())
    }

    async fn provision(&self) -> Result<StepOutcome, ProvisionError> {
        self.provisioner.provision(&self.request()).await
    }

    async fn set_password(&self, password: &str) -> Result<(), ProvisionError> {
        self.provisioner
            .set_password(&self.domain, &LocalPart::postmaster(), &secret(password))
            .await
    }

    /// Removes the mailbox through the provisioner and checks nothing is left.
    async fn remove(&self) {
        let postmaster = LocalPart::postmaster();
        let archived = self
            .provisioner
            .remove_mailbox(&self.domain, &postmaster, &self.archive)
            .await
            .expect("remove succeeds");
        if let Some(path) = archived {
            assert!(path.starts_with(&self.archive.display().to_string()));
            assert!(Path::new(&path).join("cur").is_dir(), "the mail was kept");
        }
        assert!(self.passwd_lines().is_empty());
        assert!(!self.maildir().exists());
        assert!(!self
            .provisioner
            .mailbox_exists(&self.domain)
            .await
            .expect("status"));
        let again = self
            .provisioner
            .remove_mailbox(&self.domain, &postmaster, &self.archive)
            .await
            .expect("a second remove succeeds");
        assert_eq!(again, None);
    }
}

impl Drop for Fixture {
    /// Safety net for a failed test: the same script's `remove`, run locally (the mail host is
    /// this machine), so a half-done test leaves no line in Dovecot's passwd-file.
    fn drop(&mut self) {
        let config = self.provisioner.config();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("mpanel-script")
            .arg("remove")
            .arg(&config.passwd_file)
            .arg(&config.mail_root)
            .arg(self.domain.as_str())
            .arg("postmaster")
            .arg(&self.archive)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.archive);
        // Best effort: fails while another test's archive is still there.
        if let Some(parent) = self.archive.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

fn passwd_lines_for(passwd_file: &Path, address: &str) -> Vec<String> {
    let prefix = format!("{address}:");
    fs::read_to_string(passwd_file)
        .expect("read the passwd-file")
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

fn dovecot_gid() -> u32 {
    fs::read_to_string("/etc/group")
        .expect("read /etc/group")
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next() == Some("dovecot"))
                .then(|| fields.nth(1).and_then(|gid| gid.parse().ok()))
                .flatten()
        })
        .expect("a dovecot group")
}

/// Dovecot must keep reading the file: 0640 root:dovecot.
fn assert_passwd_file_readable_by_dovecot(path: &Path) {
    let meta = fs::metadata(path).expect("passwd-file metadata");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o640,
        "mode of {path:?}"
    );
    assert_eq!(meta.uid(), 0, "owner of {path:?}");
    assert_eq!(meta.gid(), dovecot_gid(), "group of {path:?}");
}

fn assert_maildir(maildir: &Path) {
    for dir in [
        maildir.to_path_buf(),
        maildir.join("cur"),
        maildir.join("new"),
        maildir.join("tmp"),
    ] {
        let meta = fs::symlink_metadata(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
        assert!(meta.is_dir(), "{dir:?} is a directory");
        assert_eq!((meta.uid(), meta.gid()), (5000, 5000), "owner of {dir:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "mode of {dir:?}");
    }
}

/// One IMAP `LOGIN` on the real Dovecot; returns the tagged answer (`a1 OK …`, `a1 NO …`).
fn imap_login(user: &str, password: &str) -> String {
    let port: u16 = env_var("MAIL_IMAP_PORT").parse().expect("MAIL_IMAP_PORT");
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Dovecot's IMAP port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("* OK"), "greeting: {line:?}");
    write!(writer, "a1 LOGIN \"{user}\" \"{password}\"\r\n").expect("send LOGIN");
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read answer");
        assert!(n > 0, "Dovecot closed the connection");
        if line.starts_with("a1 ") {
            let _ = writer.write_all(b"a2 LOGOUT\r\n");
            return line.trim_end().to_owned();
        }
    }
}

/// Logs in until Dovecot accepts (it sees a passwd-file change within about a second).
fn assert_login_works(user: &str, password: &str) {
    let started = Instant::now();
    loop {
        let answer = imap_login(user, password);
        if answer.starts_with("a1 OK") {
            return;
        }
        assert!(
            started.elapsed() < LOGIN_RETRY,
            "login as {user} refused: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Logs in until Dovecot refuses (a removed line may still be in the copy it read last second).
fn assert_login_stops_working(user: &str, password: &str) {
    let started = Instant::now();
    loop {
        let answer = imap_login(user, password);
        if answer.starts_with("a1 NO") {
            return;
        }
        assert!(
            started.elapsed() < LOGIN_RETRY,
            "login as {user} still works: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_login_refused(user: &str, password: &str) {
    let answer = imap_login(user, password);
    assert!(answer.starts_with("a1 NO"), "login as {user}: {answer}");
}

#[tokio::test]
async fn provision_creates_a_mailbox_that_can_log_in_once_a_password_is_set() {
    let fx = Fixture::new();
    assert!(!fx
        .provisioner
        .mailbox_exists(&fx.domain)
        .await
        .expect("status"));

    let outcome = fx.provision().await.expect("provision succeeds");
    assert_eq!(outcome, fx.expected_outcome());

    let lines = fx.passwd_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let hash = lines[0]
        .strip_prefix(&format!("{}:", fx.address()))
        .expect("the address");
    assert!(hash.starts_with("{SHA512-CRYPT}$6$"), "{hash}");
    assert!(
        !hash.contains(':'),
        "the minimal `user:{{SCHEME}}hash` line"
    );
    assert_passwd_file_readable_by_dovecot(fx.passwd_file());
    assert_maildir(&fx.maildir());
    assert!(fx
        .provisioner
        .mailbox_exists(&fx.domain)
        .await
        .expect("status"));

    // Nobody knows the initial password.
    assert_login_refused(&fx.address(), "guess-1234");

    fx.set_password("Known-pass-1234").await.expect("set");
    assert_login_works(&fx.address(), "Known-pass-1234");
    assert_login_refused(&fx.address(), "Known-pass-12345");
    assert_login_refused(&fx.address(), "wrong");
    assert_eq!(fx.passwd_lines().len(), 1);
    assert_passwd_file_readable_by_dovecot(fx.passwd_file());

    fx.remove().await;
    assert_login_stops_working(&fx.address(), "Known-pass-1234");
}

#[tokio::test]
async fn rerun_converges_and_keeps_the_customers_password() {
    let fx = Fixture::new();
    let first = fx.provision().await.expect("first run");
    fx.set_password("Customer-chose-this").await.expect("set");
    let line_before = fx.passwd_lines();

    let second = fx.provision().await.expect("second run");
    assert_eq!(second, first);
    assert_eq!(fx.passwd_lines(), line_before, "the line is left as it is");
    assert_maildir(&fx.maildir());
    assert_passwd_file_readable_by_dovecot(fx.passwd_file());
    assert_login_works(&fx.address(), "Customer-chose-this");

    // Setting the same password again converges too (another salt, same effect).
    fx.set_password("Customer-chose-this").await.expect("again");
    assert_eq!(fx.passwd_lines().len(), 1);
    assert_login_works(&fx.address(), "Customer-chose-this");

    fx.remove().await;
}

#[tokio::test]
async fn rerun_repairs_a_missing_maildir_and_ignores_crash_leftovers() {
    let fx = Fixture::new();
    fx.provision().await.expect("first run");
    fx.set_password("Repair-me-please").await.expect("set");
    let line = fx.passwd_lines();

    // A crash between the steps (or an operator's rm): the line is there, the Maildir not.
    fs::remove_dir_all(fx.maildir()).expect("delete the Maildir");
    let status = fx
        .provisioner
        .mailbox_status(&fx.domain, &LocalPart::postmaster())
        .await
        .expect("status");
    assert_eq!(
        status,
        MailboxStatus {
            in_passwd_file: true,
            maildir: false
        }
    );

    // A crashed run's temp file, and a lock file left behind (its flock died with its holder).
    let passwd = fx.passwd_file();
    let dir = passwd.parent().expect("a directory");
    let name = passwd.file_name().expect("a name").to_string_lossy();
    let stale_tmp = dir.join(format!(".{name}.tmp.999999"));
    fs::write(&stale_tmp, "half a passwd-file").expect("stale temp file");
    let lock = PathBuf::from(format!("{}.lock", passwd.display()));
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&lock)
        .expect("lock file");

    assert_eq!(fx.provision().await.expect("repair"), fx.expected_outcome());
    assert_maildir(&fx.maildir());
    assert_eq!(fx.passwd_lines(), line, "password untouched");
    assert!(!stale_tmp.exists(), "the crashed run's temp file is gone");
    assert_login_works(&fx.address(), "Repair-me-please");

    // A live holder of the lock delays a run; it does not break it.
    let holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "1.5"])
        .spawn()
        .expect("flock holds the lock");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    fx.provision().await.expect("waits for the lock");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "the run waited for the lock ({:?})",
        started.elapsed()
    );
    let mut holder = holder;
    holder.wait().expect("holder finished");

    fx.remove().await;
}

#[tokio::test]
async fn a_missing_passwd_file_fails_permanently_and_writes_nothing() {
    let missing_dir = format!("/var/tmp/mpanel-no-such-dir-{}", Uuid::new_v4().simple());
    let fx = Fixture::with_config(|c| c.passwd_file = PathBuf::from(&missing_dir).join("passwd"));
    let real_passwd = PathBuf::from(env_var("MAIL_PASSWD_FILE"));

    let error = fx.provision().await.expect_err("no passwd-file");
    // Permanent: the mail host is not set up as configured; retrying the same job cannot fix
    // that, and an operator's retry starts a new series once it is fixed.
    let ProvisionError::Permanent(message) = &error else {
        panic!("expected a permanent error, got {error:?}");
    };
    assert!(message.contains("status 78"), "{message}");
    assert!(message.contains(&missing_dir), "{message}");
    assert!(!Path::new(&missing_dir).exists(), "nothing created");
    assert!(
        !fx.maildir().parent().expect("domain dir").exists(),
        "no Maildir before the passwd-file is known good"
    );
    assert!(passwd_lines_for(&real_passwd, &fx.address()).is_empty());

    // A directory where the file should be is refused the same way.
    let fx = Fixture::with_config(|c| {
        c.passwd_file = c.mail_root.clone();
    });
    let error = fx.provision().await.expect_err("not a file");
    assert!(matches!(error, ProvisionError::Permanent(_)), "{error:?}");
    assert!(!fx.maildir().exists());
    assert_passwd_file_readable_by_dovecot(&real_passwd);

    // set-password on a mailbox that does not exist is permanent too, and creates nothing.
    let fx = Fixture::new();
    let error = fx.set_password("Nobody-has-this").await.expect_err("none");
    assert!(matches!(&error, ProvisionError::Permanent(m) if m.contains("status 67")));
    assert!(fx.passwd_lines().is_empty());
}

#[tokio::test]
async fn concurrent_runs_lose_no_line() {
    let fixtures: Vec<Fixture> = (0..5).map(|_| Fixture::new()).collect();
    let results = futures::future::join_all(fixtures.iter().map(|fx| fx.provision())).await;
    for (fx, result) in fixtures.iter().zip(results) {
        assert_eq!(result.expect("provision"), fx.expected_outcome());
    }
    for fx in &fixtures {
        assert_eq!(fx.passwd_lines().len(), 1, "{}", fx.address());
        assert_maildir(&fx.maildir());
    }
    assert_passwd_file_readable_by_dovecot(fixtures[0].passwd_file());

    let removals = futures::future::join_all(fixtures.iter().map(|fx| fx.remove())).await;
    assert_eq!(removals.len(), 5);
}

/// Where `flock(1)` is missing the script refuses (a configuration error, status 78) before it
/// touches the passwd-file: a lock that cannot break stale holders safely is worse than none. Run it
/// locally with a PATH that hides `flock`, on a private passwd-file.
#[test]
fn without_flock_the_script_refuses_before_touching_the_passwd_file() {
    let base = std::env::temp_dir().join(format!("mpanel-mail-lock-{}", Uuid::new_v4().simple()));
    let bin = base.join("bin");
    fs::create_dir_all(&bin).expect("bin dir");
    let mut seen = HashSet::new();
    for dir in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            if name == "flock" || !seen.insert(name.clone()) {
                continue;
            }
            let _ = std::os::unix::fs::symlink(entry.path(), bin.join(&name));
        }
    }
    let passwd = base.join("passwd");
    fs::write(&passwd, "").expect("passwd-file");
    fs::set_permissions(&passwd, fs::Permissions::from_mode(0o640)).expect("mode");
    let mail_root = base.join("mail");
    fs::create_dir(&mail_root).expect("mail root");

    let mut child = Command::new("/bin/sh")
        .env("PATH", &bin)
        .arg("-c")
        .arg(SCRIPT)
        .arg("mpanel-script")
        .arg("ensure")
        .arg(&passwd)
        .arg(&mail_root)
        .arg("d0.example.net")
        .arg("postmaster")
        .args(["5000", "5000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"No-flock-pass\n")
        .expect("password");
    let out = child.wait_with_output().expect("finished");
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("flock"));
    assert_eq!(
        fs::read_to_string(&passwd).expect("passwd"),
        "",
        "nothing written"
    );
    fs::remove_dir_all(&base).expect("clean up");
}

#[tokio::test]
async fn passwords_never_show_in_outcomes_or_errors() {
    let fx = Fixture::new();
    let password = format!("Plain-{}", Uuid::new_v4().simple());

    // Before the mailbox exists: refused, without echoing the password.
    let error = fx.set_password(&password).await.expect_err("no mailbox");
    assert!(!format!("{error:?} {error}").contains(&password));

    let outcome = fx.provision().await.expect("provision");
    fx.set_password(&password).await.expect("set");
    let again = fx.provision().await.expect("again");
    for text in [format!("{outcome:?}"), format!("{again:?}")] {
        assert!(!text.contains(&password), "{text}");
    }
    let unusable = format!("{password}\nsecond line");
    let error = fx.set_password(&unusable).await.expect_err("two lines");
    assert!(!format!("{error:?} {error}").contains(&password));
    assert!(!format!("{:?}", secret(&password)).contains(&password));
    assert!(!format!("{:?}", fx.provisioner).contains(&password));
    let passwd = fs::read_to_string(fx.passwd_file()).expect("passwd-file");
    assert!(!passwd.contains(&password), "only the hash is stored");
    assert_login_works(&fx.address(), &password);

    // The wrong step is refused before anything runs.
    let mut request = fx.request();
    request.step = ProvisioningStep::Dns;
    assert!(matches!(
        fx.provisioner.provision(&request).await,
        Err(ProvisionError::Permanent(_))
    ));

    fx.remove().await;
}

/// The passwd-file line of a suspended mailbox: the original one padded to the extra fields,
/// with `nologin` and the reason Dovecot reports.
fn suspended_line(line: &str) -> String {
    format!("{line}::::::nologin reason=Mailbox-suspended")
}

#[tokio::test]
async fn suspend_refuses_logins_keeps_everything_and_unsuspend_restores_them() {
    let fx = Fixture::new();
    fx.provision().await.expect("provision");
    fx.set_password("Suspend-me-1234").await.expect("set");
    assert_login_works(&fx.address(), "Suspend-me-1234");
    let line = fx.passwd_lines();
    assert_eq!(line.len(), 1);
    fs::write(
        fx.maildir().join("new").join("1.mail"),
        "Subject: kept\r\n\r\nhi\r\n",
    )
    .expect("a message");

    assert_eq!(
        fx.run(JobAction::Suspend).await.expect("suspend"),
        fx.changed(JobAction::Suspend, None)
    );
    assert_eq!(
        fx.passwd_lines(),
        vec![suspended_line(&line[0])],
        "hash kept"
    );
    assert_passwd_file_readable_by_dovecot(fx.passwd_file());
    assert_maildir(&fx.maildir());
    assert!(
        fx.maildir().join("new").join("1.mail").is_file(),
        "mail kept"
    );
    assert_login_stops_working(&fx.address(), "Suspend-me-1234");
    let answer = imap_login(&fx.address(), "Suspend-me-1234");
    assert!(
        answer.contains("Mailbox-suspended"),
        "Dovecot says why: {answer}"
    );

    // Re-running converges: same outcome, same line (the file is shared with concurrent tests,
    // so its mtime proves nothing here; the private-file test below checks bytes).
    assert_eq!(
        fx.run(JobAction::Suspend).await.expect("suspend again"),
        fx.changed(JobAction::Suspend, None)
    );
    assert_eq!(fx.passwd_lines(), vec![suspended_line(&line[0])]);
    // Provisioning again keeps the line as it is, suspended.
    fx.provision().await.expect("re-provision");
    assert_eq!(fx.passwd_lines(), vec![suspended_line(&line[0])]);
    assert_login_refused(&fx.address(), "Suspend-me-1234");

    assert_eq!(
        fx.run(JobAction::Unsuspend).await.expect("unsuspend"),
        fx.changed(JobAction::Unsuspend, None)
    );
    assert_eq!(
        fx.passwd_lines(),
        line,
        "the line is back to its original form"
    );
    assert_login_works(&fx.address(), "Suspend-me-1234");
    assert_eq!(
        fx.run(JobAction::Unsuspend).await.expect("unsuspend again"),
        fx.changed(JobAction::Unsuspend, None)
    );
    assert_eq!(fx.passwd_lines(), line);
    assert_login_works(&fx.address(), "Suspend-me-1234");

    fx.remove().await;
}

#[tokio::test]
async fn suspend_keeps_other_extra_fields_and_repairs_duplicates() {
    let fx = Fixture::new();
    fx.provision().await.expect("provision");
    fx.set_password("Extra-fields-123").await.expect("set");
    // A hand-edited line with fields of its own (a userdb override with a colon in its value)
    // and, below it, a duplicate that Dovecot ignores.
    let original = fx.passwd_lines().remove(0);
    let edited = format!("{original}:::::: userdb_quota_rule=*:storage=1G");
    replace_passwd_line(
        fx.passwd_file(),
        &fx.address(),
        &format!("{edited}\n{original}"),
    );
    assert_eq!(fx.passwd_lines(), vec![edited, original.clone()]);

    fx.run(JobAction::Suspend).await.expect("suspend");
    assert_eq!(
        fx.passwd_lines(),
        vec![format!(
            "{original}::::::userdb_quota_rule=*:storage=1G nologin reason=Mailbox-suspended"
        )]
    );
    assert_login_stops_working(&fx.address(), "Extra-fields-123");
    fx.run(JobAction::Unsuspend).await.expect("unsuspend");
    assert_eq!(
        fx.passwd_lines(),
        vec![format!("{original}::::::userdb_quota_rule=*:storage=1G")]
    );
    assert_login_works(&fx.address(), "Extra-fields-123");

    fx.remove().await;
}

/// Puts `lines` in place of the shared passwd-file's line for `address`, the way the script
/// edits it (under its lock, read and rewrite together; temp file with the same owner, mode and
/// a later mtime; rename), so concurrent tests lose nothing and Dovecot notices.
fn replace_passwd_line(passwd: &Path, address: &str, lines: &str) {
    let status = Command::new("flock")
        .arg(format!("{}.lock", passwd.display()))
        .arg("sh")
        .arg("-c")
        .arg(
            "tmp=\"$1.test-tmp.$$\" && \
             awk -F: -v u=\"$2\" '$1 == u { print ENVIRON[\"LINES\"]; next } { print }' \"$1\" \
               >\"$tmp\" && \
             chown --reference=\"$1\" \"$tmp\" && chmod --reference=\"$1\" \"$tmp\" && \
             touch -d @$(($(stat -c %Y \"$1\") + 1)) \"$tmp\" && mv -f \"$tmp\" \"$1\"",
        )
        .arg("replace")
        .arg(passwd)
        .arg(address)
        .env("LINES", lines)
        .status()
        .expect("flock runs");
    assert!(status.success());
}

#[tokio::test]
async fn suspending_a_missing_mailbox_is_permanent_and_creates_nothing() {
    let fx = Fixture::new();
    for action in [JobAction::Suspend, JobAction::Unsuspend] {
        let error = fx.run(action).await.expect_err("no mailbox");
        assert!(
            matches!(&error, ProvisionError::Permanent(m) if m.contains("status 67")),
            "{error:?}"
        );
    }
    assert!(fx.passwd_lines().is_empty());
    assert!(!fx.maildir().exists());
}

/// Clears the immutable flag of a file even when the test fails half-way.
struct Immutable<'a>(&'a Path);

impl<'a> Immutable<'a> {
    fn set(path: &'a Path) -> Self {
        let status = Command::new("chattr").arg("+i").arg(path).status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "chattr +i {path:?}: {status:?}"
        );
        Self(path)
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
    }
}

/// A passwd-file root cannot write (immutable) fails the lifecycle actions permanently, with
/// the path in the message, and changes nothing; once fixed, the same job succeeds. Run on a
/// private passwd-file, since Dovecot's is shared with concurrent tests.
#[tokio::test]
async fn an_unwritable_passwd_file_fails_permanently_changes_nothing_and_recovers() {
    let dir = PathBuf::from(format!(
        "/var/tmp/mpanel-mail-ro-{}",
        Uuid::new_v4().simple()
    ));
    fs::create_dir_all(&dir).expect("dir");
    let passwd = dir.join("passwd");
    let fx = Fixture::with_config(|c| c.passwd_file.clone_from(&passwd));
    let line = format!("{}:{{SHA512-CRYPT}}$6$salt$hash", fx.address());
    let content = format!("other@example.org:{{SHA512-CRYPT}}$6$a$b\n{line}\n");
    fs::write(&passwd, &content).expect("private passwd-file");
    fs::set_permissions(&passwd, fs::Permissions::from_mode(0o640)).expect("mode");

    {
        let _frozen = Immutable::set(&passwd);
        for action in [
            JobAction::Suspend,
            JobAction::Unsuspend,
            JobAction::Terminate,
        ] {
            let error = fx.run(action).await.expect_err("not writable");
            let ProvisionError::Permanent(message) = &error else {
                panic!("{action}: expected a permanent error, got {error:?}");
            };
            assert!(message.contains("status 78"), "{message}");
            assert!(message.contains("not writable"), "{message}");
            assert!(message.contains(&passwd.display().to_string()), "{message}");
        }
        assert_eq!(fs::read_to_string(&passwd).expect("read"), content);
    }

    assert_eq!(
        fx.run(JobAction::Suspend).await.expect("fixed"),
        fx.changed(JobAction::Suspend, None)
    );
    assert_eq!(
        passwd_lines_for(&passwd, &fx.address()),
        vec![suspended_line(&line)]
    );
    fx.run(JobAction::Unsuspend).await.expect("unsuspend");
    assert_eq!(
        fs::read_to_string(&passwd).expect("read"),
        content,
        "byte for byte"
    );
    drop(fx);
    let _ = fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn terminate_deletes_the_line_archives_the_maildir_and_converges() {
    let fx = Fixture::new();
    fx.provision().await.expect("provision");
    fx.set_password("Terminate-me-123").await.expect("set");
    fs::write(
        fx.maildir().join("new").join("1.mail"),
        "Subject: kept\r\n\r\nhi\r\n",
    )
    .expect("a message");
    fx.run(JobAction::Suspend).await.expect("suspended first");

    let outcome = fx.run(JobAction::Terminate).await.expect("terminate");
    let StepOutcome::Changed {
        archived: Some(archived),
        ..
    } = &outcome
    else {
        panic!("the Maildir is archived: {outcome:?}");
    };
    assert_eq!(
        outcome,
        fx.changed(JobAction::Terminate, Some(archived.clone()))
    );
    assert!(Path::new(archived).starts_with(&fx.archive), "{archived}");
    assert!(
        Path::new(archived).join("new").join("1.mail").is_file(),
        "mail kept"
    );
    assert!(fx.passwd_lines().is_empty());
    assert!(!fx.maildir().exists());
    assert_passwd_file_readable_by_dovecot(fx.passwd_file());
    assert_login_stops_working(&fx.address(), "Terminate-me-123");

    assert_eq!(
        fx.run(JobAction::Terminate).await.expect("again"),
        fx.changed(JobAction::Terminate, None),
        "nothing left the second time"
    );
    assert_eq!(fs::read_dir(&fx.archive).expect("archive").count(), 1);
}
