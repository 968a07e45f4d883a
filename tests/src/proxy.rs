//! A TCP forwarder a test can switch off and on, to take a real server "down" for one app
//! without disturbing the other tests that share it.
//!
//! The proxy keeps its port bound from creation to drop, up or down. A port that was only
//! picked (bound to port 0, then released) and left free while the proxy is down can be picked
//! again by another test's server: the app under test would then reach that server instead of
//! a refused connection, and fail in a way the test did not stage.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Forwards `127.0.0.1:<port>` to `target` while up; while down, resets every connection at
/// once (the client sees a reset, as from a host whose server is not running).
pub struct TcpProxy {
    /// The port clients connect to.
    pub port: u16,
    up: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    accepted: Arc<AtomicUsize>,
    /// The forwarded connections: taking the proxy down aborts them, which closes them, as a
    /// server going down would (kept-alive HTTP and SSH sessions included).
    forwarded: Arc<Mutex<JoinSet<()>>>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy on a free port, initially down. Must be called within a Tokio runtime.
    ///
    /// # Panics
    /// When no port is free.
    #[must_use]
    pub fn new(target: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .expect("a proxy listener on a free port");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(Mutex::new(JoinSet::new()));
        let task = tokio::spawn(serve(
            listener,
            target.to_owned(),
            up.clone(),
            delay_ms.clone(),
            accepted.clone(),
            forwarded.clone(),
        ));
        Self {
            port,
            up,
            delay_ms,
            accepted,
            forwarded,
            task,
        }
    }

    /// Makes every forwarded connection wait `delay` before it reaches the target (a slow
    /// server), so a test can act while requests are in flight.
    #[must_use]
    pub fn slow(self, delay: Duration) -> Self {
        self.set_delay(delay);
        self
    }

    /// Changes the delay of connections accepted from now on.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Starts forwarding.
    pub async fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// How many connections the proxy has forwarded since it was made.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops forwarding (new connections are reset) and closes the forwarded ones.
    pub async fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.close_forwarded();
    }

    /// Aborts every forwarded connection's task, which closes both of its sockets.
    fn close_forwarded(&self) {
        if let Ok(mut forwarded) = self.forwarded.lock() {
            forwarded.abort_all();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.close_forwarded();
    }
}

/// The accept loop, for the proxy's whole life.
async fn serve(
    listener: TcpListener,
    target: String,
    up: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    accepted: Arc<AtomicUsize>,
    forwarded: Arc<Mutex<JoinSet<()>>>,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // Out of descriptors, say: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if !up.load(Ordering::SeqCst) {
            // Reset, not a graceful close: the client fails at once, as on a refused connect.
            let _ = inbound.set_zero_linger();
            drop(inbound);
            continue;
        }
        accepted.fetch_add(1, Ordering::SeqCst);
        let target = target.clone();
        let delay = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
        let Ok(mut forwarded) = forwarded.lock() else {
            return;
        };
        while forwarded.try_join_next().is_some() {}
        forwarded.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
