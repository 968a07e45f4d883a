//! Private Postgres and Redis servers for fault tests.
//!
//! A fault test that stops Postgres or Redis must not take down the stack's servers, which every
//! other test (and other engineers' runs) share. These start a server of their own — a fresh
//! cluster from `initdb` run as the `postgres` OS user, a `redis-server` in the foreground — on
//! a free loopback port with its state in a temp dir, and remove it all when dropped. As
//! `scripts/lib/stack.sh` does, they run as root (initdb through `runuser -u postgres`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::free_port;

/// Runs `command`, panicking with its output when it fails (this is test setup).
fn run(command: &mut Command, what: &str) {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `ready` every 50 ms for at most `secs` seconds.
fn wait_for(secs: u64, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The PostgreSQL server binaries: `$PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`
/// holding `initdb` (where Debian puts them, as `scripts/lib/stack.sh` expects).
fn pg_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PG_BIN") {
        return PathBuf::from(bin);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql (run scripts/stack.sh)")
}

fn chown_postgres(path: &Path) {
    run(
        Command::new("chown").arg("postgres:postgres").arg(path),
        "chown to postgres",
    );
}

/// A Postgres cluster of the test's own, which it may stop and start at will.
pub struct PrivatePostgres {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    password: String,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    /// `initdb`s a cluster into a temp dir (as the `postgres` OS user) and starts it.
    ///
    /// # Panics
    /// When any step fails, e.g. not running as root or no PostgreSQL installed.
    #[must_use]
    pub fn start() -> Self {
        let bin = pg_bin();
        // Under /var/tmp, not the checkout: the postgres user must traverse every parent.
        let dir = PathBuf::from(format!(
            "/var/tmp/mpanel-faults-pg-{}",
            Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("private pg dir");
        chown_postgres(&dir);
        let password = Uuid::new_v4().simple().to_string();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).expect("pwfile");
        chown_postgres(&pwfile);
        let data = dir.join("data");
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb (as the postgres user; the suite runs as root)",
        );
        let port = free_port();
        // fsync off is safe here: an immediate shutdown loses no WAL the OS already has.
        // synchronous_commit stays on, so a commit the app saw is in the WAL before it answers.
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             max_connections = 100\nshared_buffers = 16MB\nfsync = off\nfull_page_writes = off\n",
            dir.display()
        );
        let mut pg_conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut pg_conf, conf.as_bytes()).expect("configure");
        let server = Self {
            port,
            password,
            dir,
            bin,
        };
        server.start_again();
        server
    }

    /// `postgres://…/postgres` on this server, for [`crate::TestApp::spawn_on`].
    #[must_use]
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    fn pg_ctl(&self, args: &[&str], what: &str) {
        let log = self.dir.join("postgres.log");
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(&log)
                .args(args),
            what,
        );
    }

    /// Stops the server with `pg_ctl stop -m MODE` (`fast`: roll back and disconnect
    /// everyone; `immediate`: quit at once, crash recovery on the next start) and waits until
    /// it is gone.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn stop(&self, mode: &str) {
        self.pg_ctl(&["-m", mode, "-w", "-t", "60", "stop"], "pg_ctl stop");
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    ///
    /// # Panics
    /// When it does not come up within 60 s.
    pub fn start_again(&self) {
        // A postmaster stopped with `-m immediate` may leave backends exiting for a moment;
        // pg_ctl refuses while they hold the shared memory, so try a few times.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.dir.join("postgres.log");
            let ok = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private postgres did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` of the test's own (no persistence), which it may stop and start at will.
pub struct PrivateRedis {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port and waits for `PONG`.
    ///
    /// # Panics
    /// When it does not start (is redis-server installed? `scripts/stack.sh` installs it).
    #[must_use]
    pub fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("mpanel-faults-redis-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("private redis dir");
        let mut redis = Self {
            port: free_port(),
            dir,
            child: None,
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p PORT ARGS…`; its trimmed stdout, or `None` when it fails.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn answers(&self) -> bool {
        self.cli(&["PING"]).as_deref() == Some("PONG")
    }

    /// Starts the (stopped) server again on the same port, empty, and waits for `PONG`.
    ///
    /// # Panics
    /// When it does not answer within 30 s.
    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for(30, "private redis to answer PING", || self.answers());
    }

    /// Stops the server (SIGKILL: what a crash or an OOM kill does) and waits until it is gone
    /// and its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for(30, "private redis to stop answering", || !self.answers());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
