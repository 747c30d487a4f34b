//! `RowResult`: the outcome of one row, as the executor hands it out, the run's log stores it
//! (`wal.rs`) and a poll's batch carries it (`batch.rs`).

use crate::error::ErrorType;
use serde::{Deserialize, Serialize};

/// The outcome of one row, after all its attempts (also a record of the run's log, `wal.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowResult {
    pub row: u64,
    pub ok: bool,
    pub output: Option<String>,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Duration of the last attempt (the one whose answer is recorded).
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error_type: Option<ErrorType>,
    pub error: Option<String>,
    /// Microseconds since the Unix epoch (UTC).
    pub started_at_us: i64,
    pub finished_at_us: i64,
    pub request_hash: String,
}
