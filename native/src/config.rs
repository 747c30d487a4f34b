//! `RunConfig`: everything one run needs, parsed from the JSON the Python side sends.

use crate::error::{Error, Result};
use crate::provider::{ProviderKind, RequestParams};
use crate::secret::ApiKey;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    provider: ProviderKind,
    api_base: String,
    #[serde(default)]
    api_key: String,
    model: String,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    system: Option<String>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    tpm: Option<u32>,
    #[serde(default = "default_max_retries")]
    max_retries: u32,
    #[serde(default = "default_timeout")]
    timeout: f64,
    #[serde(default = "default_fail_fast")]
    fail_fast: bool,
    #[serde(default)]
    log: Option<String>,
}

fn default_concurrency() -> usize {
    32
}
fn default_max_retries() -> u32 {
    6
}
fn default_timeout() -> f64 {
    60.0
}
fn default_fail_fast() -> bool {
    true
}

/// One run's settings. The key lives in an `ApiKey` and never prints.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub provider: ProviderKind,
    pub api_base: String,
    pub api_key: ApiKey,
    pub params: RequestParams,
    pub concurrency: usize,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_retries: u32,
    pub timeout: Duration,
    /// Stop when the first rows all fail with the same permanent error (see `failfast.rs`).
    pub fail_fast: bool,
    /// Where the run's log goes: segments `{log}000001.wal`, ... (see `wal.rs`); none if unset.
    pub log: Option<PathBuf>,
}

impl RunConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)?;
        if raw.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if !(raw.timeout.is_finite() && raw.timeout > 0.0) {
            return Err(Error::Config(
                "timeout must be a positive number of seconds".into(),
            ));
        }
        if raw.rpm == Some(0) || raw.tpm == Some(0) {
            return Err(Error::Config("rpm and tpm must be at least 1".into()));
        }
        Ok(Self {
            provider: raw.provider,
            api_base: raw.api_base.trim_end_matches('/').to_string(),
            api_key: ApiKey::new(raw.api_key),
            params: RequestParams {
                model: raw.model,
                temperature: raw.temperature,
                max_tokens: raw.max_tokens,
                stream: raw.stream,
                system: raw.system,
            },
            concurrency: raw.concurrency,
            rpm: raw.rpm,
            tpm: raw.tpm,
            max_retries: raw.max_retries,
            timeout: Duration::from_secs_f64(raw.timeout),
            fail_fast: raw.fail_fast,
            log: raw.log.map(PathBuf::from),
        })
    }
}
