//! A TCP forwarder a test can switch off and on, to take a real server "down" for one app
//! without disturbing the other tests that share it.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:<port>` to `target` while up; refuses connections while down.
pub struct TcpProxy {
    /// The port clients connect to.
    pub port: u16,
    target: String,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// A proxy on a free port, initially down.
    ///
    /// # Panics
    /// When no port is free.
    #[must_use]
    pub fn new(target: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Self {
            port,
            target: target.to_owned(),
            delay_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            accepted: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            task: Arc::new(Mutex::new(None)),
        }
    }

    /// Makes every forwarded connection wait `delay` before it reaches the target (a slow
    /// server), so a test can act while requests are in flight.
    #[must_use]
    pub fn slow(self, delay: std::time::Duration) -> Self {
        self.set_delay(delay);
        self
    }

    /// Changes the delay of connections accepted from now on.
    pub fn set_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts forwarding.
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub async fn up(&self) {
        let mut slot = self.task.lock().await;
        if slot.is_some() {
            return;
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind proxy port");
        let target = self.target.clone();
        let delay_ms = self.delay_ms.clone();
        let accepted = self.accepted.clone();
        *slot = Some(tokio::spawn(async move {
            // The forwarded connections live in this task's set: taking the proxy down drops
            // it, which closes them, as a server going down would (kept-alive HTTP and SSH
            // sessions included).
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let target = target.clone();
                let delay = std::time::Duration::from_millis(
                    delay_ms.load(std::sync::atomic::Ordering::SeqCst),
                );
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// How many connections the proxy has accepted since it was made.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting (new connections are refused) and closes the forwarded ones.
    pub async fn down(&self) {
        if let Some(task) = self.task.lock().await.take() {
            task.abort();
            let _ = task.await;
        }
    }
}
