//! The project's own mock OpenAI/Anthropic server: deterministic replies, latency, rate limits, faults.
//!
//! Routes: `POST /v1/chat/completions` (OpenAI), `POST /v1/messages` (Anthropic), and the
//! control endpoints `GET /_mock/stats` ([`MockStats`] as JSON), `POST /_mock/reset`,
//! `GET /health`. Checks run in this order: auth (401) → quota → body validation (400) →
//! overload episode (Anthropic 529, OpenAI 503) → rate limit (429) → latency → random fault →
//! bad marker (400) → reply (see [`reply_text`]).
//!
//! Rate limits are enforced per second and stated per minute, as the providers do: with R
//! requests per second in force the headers say a limit of 60 × R (see [`MockConfig`]). The
//! rate may follow a schedule and the server may be overloaded for episodes; both count time
//! from the first API request.

mod anthropic;
mod body;
mod config;
mod delay;
mod errors;
mod faults;
mod openai;
mod ratelimit;
mod reply;
mod request;
mod server;
mod stats;

#[cfg(test)]
mod tests;

pub use config::{FaultKind, MockConfig};
pub use reply::reply_text;
pub use stats::MockStats;

use server::Shared;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Pending connections the listener queues; benchmarks open many at once.
const BACKLOG: u32 = 1024;
/// The shared runtime's worker thread name (set in `crate::runtime`).
const RUNTIME_THREAD: &str = "prompt-runner";
/// How long [`MockServer::stop`] waits for the listener to close.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A running mock server on the shared runtime. Stops on [`MockServer::stop`] or drop.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// Set by the accept task once the listener is dropped, so `stop` can wait for the port.
    closed: Arc<(Mutex<bool>, Condvar)>,
}

impl MockServer {
    /// Binds `addr` and serves on [`crate::runtime::runtime`]; `127.0.0.1:0` picks a free port.
    /// Callable from any thread, async or not. Fails on a bind error or an invalid config.
    pub fn start(config: MockConfig, addr: SocketAddr) -> std::io::Result<MockServer> {
        let kinds = config.validate()?;
        let rt = crate::runtime::runtime();
        let listener = {
            // Registering the socket with the reactor needs the runtime's context.
            let _guard = rt.enter();
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(BACKLOG)?
        };
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, kinds));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let closed = Arc::new((Mutex::new(false), Condvar::new()));
        let task_shared = shared.clone();
        let task_closed = closed.clone();
        rt.spawn(async move {
            server::serve(listener, task_shared, shutdown_rx).await;
            let (done, cv) = &*task_closed;
            *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        });
        tracing::debug!(%addr, "mock server listening");
        Ok(MockServer {
            addr,
            shared,
            shutdown,
            closed,
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats.snapshot()
    }

    /// Zeroes the counters (as `POST /_mock/reset` does).
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// Stops accepting and closes open connections. Idempotent; also runs on drop. Waits
    /// (briefly, bounded) until the listener is closed, so the port refuses connections after.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
        // On a worker of the shared runtime, blocking could starve the very task that closes
        // the listener (e.g. a one-core machine); there the close just happens momentarily.
        if std::thread::current().name() == Some(RUNTIME_THREAD) {
            return;
        }
        let (done, cv) = &*self.closed;
        let guard = done.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cv.wait_timeout_while(guard, STOP_WAIT, |done| !*done);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish()
    }
}
