//! The hosting provisioner against the real local sshd (scripts/test.sh starts it and exports
//! `SSH_*` and `HOSTING_ROOT` from `.stack/stack.env`). The sshd runs on this machine, so what
//! the remote script did is checked straight on the filesystem.
//!
//! Each test works in its own `HOSTING_ROOT/test-<uuid>` (archive `HOSTING_ROOT/test-<uuid>-archive`)
//! with its own domain, so tests run in parallel and leave nothing that another run could trip
//! over.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use mpanel_adapters::provisioners::hosting::{HostingConfig, SshHostingProvisioner, SystemUser};
use mpanel_adapters::provisioners::ssh::{SshError, SshTarget};
use mpanel_adapters::provisioners::{ProvisionError, ProvisionRequest, Provisioner};
use mpanel_domain::job::{JobAction, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::DomainName;
use uuid::Uuid;

const REQUIRED_ENV: [&str; 6] = [
    "SSH_HOST",
    "SSH_PORT",
    "SSH_USER",
    "SSH_KEY_PATH",
    "SSH_KNOWN_HOSTS",
    "HOSTING_ROOT",
];

/// Fails (never skips) when the stack's environment is missing.
fn require_env() {
    let missing: Vec<&str> = REQUIRED_ENV
        .into_iter()
        .filter(|var| std::env::var(var).map_or(true, |v| v.is_empty()))
        .collect();
    assert!(
        missing.is_empty(),
        "missing environment {missing:?}: these tests need the local sshd; run them through \
         scripts/test.sh, or `set -a && source .stack/stack.env && set +a` after scripts/stack.sh"
    );
}

/// One test's world: its own root directory and domain on the real sshd.
struct Fixture {
    root: PathBuf,
    archive: PathBuf,
    domain: DomainName,
    provisioner: SshHostingProvisioner,
}

impl Fixture {
    fn new() -> Self {
        Self::with_target(|_| {})
    }

    fn with_target(adjust: impl FnOnce(&mut SshTarget)) -> Self {
        require_env();
        let id = Uuid::new_v4().simple().to_string();
        let mut config = HostingConfig::from_env().expect("hosting configuration from the env");
        config.archive_dir = config.root_dir.join(format!("test-{id}-archive"));
        config.root_dir = config.root_dir.join(format!("test-{id}"));
        adjust(&mut config.target);
        let domain = DomainName::parse(&format!("t{}.example.test", &id[..12])).expect("domain");
        Self {
            root: config.root_dir.clone(),
            archive: config.archive_dir.clone(),
            domain,
            provisioner: SshHostingProvisioner::new(config).expect("valid configuration"),
        }
    }

    fn request(&self) -> ProvisionRequest {
        self.request_for(JobAction::Provision)
    }

    fn request_for(&self, action: JobAction) -> ProvisionRequest {
        ProvisionRequest {
            job_id: Uuid::new_v4(),
            subscription_id: Uuid::new_v4(),
            step: ProvisioningStep::Hosting,
            domain: self.domain.clone(),
            action,
        }
    }

    async fn run(&self, action: JobAction) -> StepOutcome {
        self.provisioner
            .provision(&self.request_for(action))
            .await
            .unwrap_or_else(|e| panic!("{action} failed: {e}"))
    }

    fn changed(&self, action: JobAction, archived: Option<String>) -> StepOutcome {
        StepOutcome::Changed {
            action,
            server: "web1".into(),
            target: self.web_root().display().to_string(),
            archived,
        }
    }

    fn suspended_dir(&self) -> PathBuf {
        self.account().join("suspended")
    }

    fn account(&self) -> PathBuf {
        self.root.join(self.domain.as_str())
    }

    fn web_root(&self) -> PathBuf {
        self.account().join("public_html")
    }

    fn vhosts(&self) -> PathBuf {
        self.root.join("vhosts")
    }

    fn vhost(&self) -> PathBuf {
        self.vhosts().join(format!("{}.conf", self.domain))
    }

    fn expected_outcome(&self) -> StepOutcome {
        StepOutcome::Hosting {
            server: "web1".into(),
            system_user: SystemUser::for_domain(&self.domain).to_string(),
            web_root: self.web_root().display().to_string(),
            vhost_path: self.vhost().display().to_string(),
        }
    }

    fn expected_vhost(&self) -> String {
        self.vhost_with("", &self.web_root())
    }

    fn expected_suspended_vhost(&self) -> String {
        self.vhost_with("# mpanel: suspended\n", &self.suspended_dir())
    }

    fn vhost_with(&self, marker: &str, doc_root: &Path) -> String {
        let d = &self.domain;
        format!(
            "# Managed by mpanel (hosting script v2); rewritten on every provisioning run.\n\
             {marker}server {{\n    listen 127.0.0.1:80;\n    server_name {d} www.{d};\n    \
             root {};\n    index index.html index.htm;\n    location / {{\n        \
             try_files $uri $uri/ =404;\n    }}\n}}\n",
            doc_root.display()
        )
    }

    fn assert_suspended(&self) {
        assert_eq!(read(&self.vhost()), self.expected_suspended_vhost());
        let page = read(&self.suspended_dir().join("index.html"));
        assert!(page.contains("This site is suspended"), "{page}");
        assert!(self.temp_files().is_empty(), "{:?}", self.temp_files());
    }

    fn assert_in_service(&self) {
        assert_eq!(read(&self.vhost()), self.expected_vhost());
        assert!(!self.suspended_dir().exists(), "placeholder directory gone");
        assert!(self.temp_files().is_empty(), "{:?}", self.temp_files());
    }

    /// Files a crashed or concurrent run could leave behind.
    fn temp_files(&self) -> Vec<String> {
        [self.vhosts(), self.account()]
            .iter()
            .filter_map(|dir| fs::read_dir(dir).ok())
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".tmp"))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_dir_all(&self.archive);
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[tokio::test]
async fn provisions_web_root_placeholder_and_vhost() {
    let f = Fixture::new();

    let outcome = f
        .provisioner
        .provision(&f.request())
        .await
        .expect("provisioned");

    assert_eq!(outcome, f.expected_outcome());
    assert!(f.account().join("home").is_dir());
    assert!(f.web_root().is_dir());
    let index = read(&f.web_root().join("index.html"));
    assert!(index.contains(&format!("<h1>{}</h1>", f.domain)), "{index}");
    assert_eq!(read(&f.vhost()), f.expected_vhost());
    assert!(f.temp_files().is_empty(), "{:?}", f.temp_files());
}

#[tokio::test]
async fn rerun_converges_and_keeps_customer_content() {
    let f = Fixture::new();
    let first = f
        .provisioner
        .provision(&f.request())
        .await
        .expect("first run");
    let index = f.web_root().join("index.html");
    fs::write(&index, "customer site").expect("customer edits index.html");
    let vhost_mtime = fs::metadata(f.vhost())
        .and_then(|m| m.modified())
        .expect("mtime");

    let second = f
        .provisioner
        .provision(&f.request())
        .await
        .expect("second run");

    assert_eq!(second, first);
    assert_eq!(read(&index), "customer site");
    assert_eq!(read(&f.vhost()), f.expected_vhost());
    let mtime_after = fs::metadata(f.vhost())
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(
        mtime_after, vhost_mtime,
        "an unchanged vhost is not rewritten"
    );
    assert!(f.temp_files().is_empty(), "{:?}", f.temp_files());
}

#[tokio::test]
async fn converges_from_a_crash_half_way() {
    let f = Fixture::new();
    // A run that died after making the web root, while writing the vhost: no index, a
    // half-written temp file and a truncated vhost (as a non-atomic writer would leave).
    fs::create_dir_all(f.web_root()).expect("partial web root");
    fs::create_dir_all(f.vhosts()).expect("vhosts dir");
    let stale_temp = f.vhosts().join(format!(".{}.conf.tmp.4242", f.domain));
    fs::write(&stale_temp, "server {\n    listen").expect("half-written temp");
    fs::write(f.vhost(), "server {\n").expect("truncated vhost");

    let outcome = f
        .provisioner
        .provision(&f.request())
        .await
        .expect("converged");

    assert_eq!(outcome, f.expected_outcome());
    assert_eq!(read(&f.vhost()), f.expected_vhost());
    assert!(f.web_root().join("index.html").is_file());
    assert!(f.account().join("home").is_dir());
    assert!(!stale_temp.exists(), "stale temp file removed");
    assert!(f.temp_files().is_empty(), "{:?}", f.temp_files());
}

#[tokio::test]
async fn changed_host_key_is_refused_before_anything_runs() {
    require_env();
    let dir = std::env::temp_dir().join(format!("mpanel-kh-{}", Uuid::new_v4()));
    fs::create_dir_all(&dir).expect("temp dir");
    let port = std::env::var("SSH_PORT").expect("SSH_PORT");
    let wrong = dir.join("known_hosts_wrong");
    fs::write(
        &wrong,
        format!(
            "[127.0.0.1]:{port} ssh-ed25519 \
             AAAAC3NzaC1lZDI1NTE5AAAAID5mxPZE+ljzQ97SbZiBp6rwsLZpUBgwUBI1Mi9Yvwoa\n"
        ),
    )
    .expect("known_hosts with another key");
    let unknown = dir.join("known_hosts_unknown");
    fs::copy(
        std::env::var("SSH_KNOWN_HOSTS").expect("SSH_KNOWN_HOSTS"),
        &unknown,
    )
    .expect("copy known_hosts");
    let real = read(&unknown);
    fs::write(&unknown, real.replace(&format!("]:{port} "), "]:1 ")).expect("other port");

    for (known_hosts, want) in [(&wrong, "does not match"), (&unknown, "is not in")] {
        let f = Fixture::with_target(|t| t.known_hosts_path.clone_from(known_hosts));
        let error = f
            .provisioner
            .provision(&f.request())
            .await
            .expect_err("refused");
        match &error {
            ProvisionError::Permanent(message) => assert!(message.contains(want), "{message}"),
            ProvisionError::Transient(_) => panic!("host key problems are permanent: {error}"),
        }
        assert!(
            !f.root.exists(),
            "nothing may be created on an untrusted host"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unreachable_server_is_transient() {
    // A port that was just free: connecting is refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let f = Fixture::with_target(|t| t.port = port);

    let error = f
        .provisioner
        .provision(&f.request())
        .await
        .expect_err("unreachable");

    assert!(matches!(error, ProvisionError::Transient(_)), "{error}");
    assert!(error.to_string().contains("cannot connect"), "{error}");
}

#[tokio::test]
async fn remove_account_archives_the_web_root_and_is_idempotent() {
    let f = Fixture::new();
    f.provisioner
        .provision(&f.request())
        .await
        .expect("provisioned");
    fs::write(f.web_root().join("index.html"), "customer site").expect("customer content");
    let archive = f.archive.clone();

    let first = f
        .provisioner
        .remove_account(&f.domain, &archive)
        .await
        .expect("first removal");
    let second = f
        .provisioner
        .remove_account(&f.domain, &archive)
        .await
        .expect("second removal");

    let archived = PathBuf::from(first.expect("first removal archives the account"));
    assert!(archived.starts_with(&archive), "{}", archived.display());
    assert_eq!(
        read(&archived.join("public_html").join("index.html")),
        "customer site"
    );
    assert!(!f.account().exists());
    assert!(!f.vhost().exists());
    assert_eq!(second, None, "nothing left to remove the second time");
    assert_eq!(fs::read_dir(&archive).expect("archive").count(), 1);
}

#[tokio::test]
async fn remove_account_refuses_a_relative_archive_dir() {
    let f = Fixture::new();
    for bad in [
        PathBuf::from("archive"),
        f.root.join("archive"),
        f.root.clone(),
    ] {
        let error = f
            .provisioner
            .remove_account(&f.domain, &bad)
            .await
            .expect_err("refused");
        assert!(matches!(error, ProvisionError::Permanent(_)), "{error}");
    }
}

#[tokio::test]
async fn run_script_passes_hostile_arguments_and_stdin_verbatim() {
    require_env();
    let target = SshTarget::from_env("HOSTING_").expect("target from the env");
    let hostile: Vec<String> = [
        "it's",
        "$(touch /tmp/mpanel-ssh-pwned)",
        "`id`",
        "a\nb",
        "; echo injected",
        "",
        "*",
    ]
    .map(String::from)
    .to_vec();

    let output = target
        .run_script(
            "printf '[%s]\\n' \"$@\"; cat; echo err >&2; exit 3",
            &hostile,
            Some(b"from stdin\n".to_vec()),
        )
        .await
        .expect("ran");

    let expected: String = hostile.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(output.stdout, format!("{expected}from stdin\n"));
    assert_eq!(output.stderr, "err\n");
    assert_eq!(output.status, 3);
    assert!(!Path::new("/tmp/mpanel-ssh-pwned").exists());
    let nul = target.run_script("true", &["a\0b".into()], None).await;
    assert!(matches!(nul, Err(SshError::InvalidInput(_))), "{nul:?}");
}

#[tokio::test]
async fn suspend_serves_a_placeholder_keeps_content_and_unsuspend_restores_the_site() {
    let f = Fixture::new();
    f.run(JobAction::Provision).await;
    let index = f.web_root().join("index.html");
    fs::write(&index, "customer site").expect("customer content");
    fs::write(f.web_root().join("about.html"), "more").expect("more customer content");

    assert_eq!(
        f.run(JobAction::Suspend).await,
        f.changed(JobAction::Suspend, None)
    );
    f.assert_suspended();
    assert_eq!(read(&index), "customer site", "public_html untouched");
    assert_eq!(read(&f.web_root().join("about.html")), "more");

    // A re-run converges: same outcome, nothing rewritten.
    let mtime = |p: PathBuf| fs::metadata(p).and_then(|m| m.modified()).expect("mtime");
    let (vhost_mtime, page_mtime) = (
        mtime(f.vhost()),
        mtime(f.suspended_dir().join("index.html")),
    );
    assert_eq!(
        f.run(JobAction::Suspend).await,
        f.changed(JobAction::Suspend, None)
    );
    f.assert_suspended();
    assert_eq!(mtime(f.vhost()), vhost_mtime);
    assert_eq!(mtime(f.suspended_dir().join("index.html")), page_mtime);

    // Re-provisioning repairs without putting the site back in service.
    assert_eq!(f.run(JobAction::Provision).await, f.expected_outcome());
    f.assert_suspended();

    assert_eq!(
        f.run(JobAction::Unsuspend).await,
        f.changed(JobAction::Unsuspend, None)
    );
    f.assert_in_service();
    assert_eq!(read(&index), "customer site");
    assert_eq!(
        f.run(JobAction::Unsuspend).await,
        f.changed(JobAction::Unsuspend, None)
    );
    f.assert_in_service();
    assert_eq!(read(&index), "customer site");
}

#[tokio::test]
async fn suspend_repairs_what_a_crashed_run_left() {
    let f = Fixture::new();
    f.run(JobAction::Provision).await;
    // A suspend that died after making the directory and while writing the vhost: no page, a
    // stale temp page and a half-written temp vhost, the vhost still the normal one.
    fs::create_dir_all(f.suspended_dir()).expect("placeholder dir");
    let stale_page = f.account().join(".suspended-index.html.tmp.4242");
    fs::write(&stale_page, "<!DOCTYPE").expect("half page");
    let stale_vhost = f.vhosts().join(format!(".{}.conf.tmp.4242", f.domain));
    fs::write(&stale_vhost, "server {\n    listen").expect("half vhost");

    assert_eq!(
        f.run(JobAction::Suspend).await,
        f.changed(JobAction::Suspend, None)
    );
    f.assert_suspended();
    assert!(!stale_page.exists() && !stale_vhost.exists());

    // An unsuspend that died after the vhost, before removing the directory.
    fs::write(f.vhost(), f.expected_vhost()).expect("vhost back");
    fs::write(f.vhosts().join(format!(".{}.conf.tmp.99", f.domain)), "x").expect("temp");
    assert_eq!(
        f.run(JobAction::Unsuspend).await,
        f.changed(JobAction::Unsuspend, None)
    );
    f.assert_in_service();

    // Suspending an account whose files are gone (a hand cleanup) still converges.
    fs::remove_dir_all(f.account()).expect("account gone");
    fs::remove_file(f.vhost()).expect("vhost gone");
    f.run(JobAction::Suspend).await;
    f.assert_suspended();
    assert!(!f.web_root().exists(), "suspend creates no account content");
    f.run(JobAction::Unsuspend).await;
    f.assert_in_service();
    assert!(
        f.web_root().join("index.html").is_file(),
        "converged like ensure"
    );
}

#[tokio::test]
async fn terminate_archives_the_account_into_the_configured_dir_and_converges() {
    let f = Fixture::new();
    f.run(JobAction::Provision).await;
    fs::write(f.web_root().join("index.html"), "customer site").expect("customer content");
    f.run(JobAction::Suspend).await;

    let StepOutcome::Changed {
        archived: Some(archived),
        ..
    } = f.run(JobAction::Terminate).await
    else {
        panic!("terminate archives the account");
    };
    let archived = PathBuf::from(archived);
    assert!(archived.starts_with(&f.archive), "{}", archived.display());
    assert_eq!(
        f.run(JobAction::Terminate).await,
        f.changed(JobAction::Terminate, None),
        "nothing left the second time"
    );
    assert_eq!(
        read(&archived.join("public_html").join("index.html")),
        "customer site"
    );
    assert!(!f.account().exists());
    assert!(!f.vhost().exists());
    assert_eq!(fs::read_dir(&f.archive).expect("archive").count(), 1);

    // A terminate interrupted after the vhost went (the account still there) finishes the move.
    let g = Fixture::new();
    g.run(JobAction::Provision).await;
    fs::remove_file(g.vhost()).expect("vhost removed by the interrupted run");
    let outcome = g.run(JobAction::Terminate).await;
    assert!(
        matches!(&outcome, StepOutcome::Changed { archived: Some(p), .. } if p.starts_with(&g.archive.display().to_string())),
        "{outcome:?}"
    );
    assert!(!g.account().exists());
}
