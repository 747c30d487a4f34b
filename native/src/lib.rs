//! prompt-runner's native core: providers, SSE, retries, rate limits, the executor and the mock server.

pub mod batch;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod executor;
pub mod headers;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod provider;
pub mod retry;
pub mod runtime;
pub mod secret;
pub mod sse;
pub mod transport;

#[cfg(feature = "python")]
mod python;
