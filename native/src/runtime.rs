//! The process-wide tokio runtime, built once and shared by every run and mock server.

use std::sync::OnceLock;
use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The shared multi-threaded runtime (one worker per core).
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        install_crypto_provider();
        Builder::new_multi_thread()
            .enable_all()
            .thread_name("prompt-runner")
            .build()
            .expect("failed to start the tokio runtime")
    })
}

/// reqwest is built without a default TLS provider; install ring once per process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
