//! `RunConfig`: everything one run needs, parsed from the JSON the Python side sends.

use crate::error::{Error, Result};
use crate::provider::{self, Endpoint, Params, ProviderKind, RequestParams, Target};
use crate::secret::{is_credential_header, ApiKey};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Body fields merged into every request after the builder's own (they win).
    #[serde(default)]
    params: Option<Params>,
    /// Extra request headers (`anthropic-beta`, a gateway's own).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Azure: the `api-version` query parameter (required there).
    #[serde(default)]
    api_version: Option<String>,
    /// Keep each answer's JSON in the `raw` column.
    #[serde(default)]
    keep_raw: bool,
    /// Send only on permits granted from outside (`Executor.grant`: a cluster-wide limit).
    #[serde(default)]
    granted: bool,
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

/// A run's extra request headers. `Debug` shows their names only: a value may be a credential.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Headers {
    /// Checks every name and value; the error names the header, and never shows a value.
    fn parse(raw: BTreeMap<String, String>) -> Result<Self> {
        let mut headers = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            provider::header(&name, &value).map_err(|e| Error::Config(format!("headers: {e}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value));
        }
        Ok(Self(headers))
    }

    /// The names, with `(credential)` after those whose value is never shown: for messages.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|(name, _)| {
                if is_credential_header(name) {
                    format!("{name} (credential)")
                } else {
                    name.clone()
                }
            })
            .collect();
        names.join(", ")
    }
}

/// One run's settings. The key lives in an `ApiKey` and never prints, nor do header values.
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
    /// Extra request headers, after the provider's.
    pub headers: Headers,
    /// Azure's `api-version`.
    pub api_version: Option<String>,
    /// Keep each answer's JSON (`raw` column).
    pub keep_raw: bool,
    /// Send only on permits granted from outside (see `Limiter::leased`).
    pub granted: bool,
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
        let api_version = raw.api_version.filter(|v| !v.trim().is_empty());
        if raw.provider == ProviderKind::Azure && api_version.is_none() {
            return Err(Error::Config(
                "api_version is required for provider azure (e.g. \"2024-10-21\")".into(),
            ));
        }
        let extra = raw.params.filter(|p| !p.is_empty());
        if let Some(params) = &extra {
            provider::check_params(params, "params").map_err(Error::Config)?;
        }
        let headers = Headers::parse(raw.headers)?;
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
                extra: extra.map(Arc::new),
            },
            concurrency: raw.concurrency,
            rpm: raw.rpm,
            tpm: raw.tpm,
            max_retries: raw.max_retries,
            timeout: Duration::from_secs_f64(raw.timeout),
            fail_fast: raw.fail_fast,
            log: raw.log.map(PathBuf::from),
            headers,
            api_version,
            keep_raw: raw.keep_raw,
            granted: raw.granted,
        })
    }

    /// Where every row's request goes, with its headers: built once per run.
    pub fn target(&self) -> Arc<Target> {
        Endpoint {
            kind: self.provider,
            base: &self.api_base,
            key: &self.api_key,
            deployment: Some(self.params.model.as_str()),
            api_version: self.api_version.as_deref(),
            headers: &self.headers.0,
            keep_raw: self.keep_raw,
        }
        .target()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn config(extra: Value) -> Result<RunConfig> {
        let mut value = json!({"provider": "openai", "api_base": "http://h/v1/", "api_key": "sk-k", "model": "m"});
        for (key, v) in extra.as_object().unwrap() {
            value[key] = v.clone();
        }
        RunConfig::from_json(&value.to_string())
    }

    #[test]
    fn params_headers_and_raw_are_read() {
        let c = config(json!({
            "params": {"seed": 7, "top_p": 0.5},
            "headers": {"Anthropic-Beta": "tools-1", "X-Api-Token": "tok-secret-123"},
            "keep_raw": true,
        }))
        .unwrap();
        let extra = c.params.extra.as_deref().unwrap();
        assert_eq!(extra["seed"], json!(7));
        assert_eq!(
            c.headers.0,
            vec![
                ("anthropic-beta".to_string(), "tools-1".to_string()),
                ("x-api-token".to_string(), "tok-secret-123".to_string())
            ]
        );
        assert!(c.keep_raw);
        // Neither Debug nor the description shows a header's value.
        let shown = format!("{c:?} {}", c.headers.describe());
        assert!(
            !shown.contains("tok-secret") && !shown.contains("sk-k"),
            "{shown}"
        );
        assert!(shown.contains("x-api-token (credential)"));
        let target = c.target();
        assert_eq!(target.url, "http://h/v1/chat/completions");
        let (_, headers) = target.http().unwrap();
        assert_eq!(headers["anthropic-beta"], "tools-1");
        assert!(target.keep_raw);
        // Empty params are no params.
        assert!(config(json!({"params": {}}))
            .unwrap()
            .params
            .extra
            .is_none());
    }

    #[test]
    fn refused_params_and_headers_never_show_a_value() {
        for params in [json!({"messages": []}), json!({"stream": true})] {
            let err = config(json!({"params": params})).unwrap_err().to_string();
            assert!(err.contains("set by the request builder"), "{err}");
        }
        let err = config(json!({"headers": {"x-auth": "bad\nvalue-secret"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x-auth") && !err.contains("secret"), "{err}");
        let err = config(json!({"headers": {"bad name": "v"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid header name"), "{err}");
        assert!(config(json!({"params": [1]})).is_err());
    }

    #[test]
    fn azure_needs_an_api_version_and_uses_the_deployment_url() {
        let azure = |extra: Value| {
            let mut value = json!({"provider": "azure", "api_base": "https://r.openai.azure.com/",
                "api_key": "az-key-123456789", "model": "gpt-4o-prod"});
            for (key, v) in extra.as_object().unwrap() {
                value[key] = v.clone();
            }
            RunConfig::from_json(&value.to_string())
        };
        let err = azure(json!({})).unwrap_err().to_string();
        assert!(err.contains("api_version"), "{err}");
        let c = azure(json!({"api_version": "2024-10-21"})).unwrap();
        let target = c.target();
        assert_eq!(
            target.url,
            "https://r.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            target.headers,
            vec![
                ("api-key", "az-key-123456789".to_string()),
                ("content-type", "application/json".to_string())
            ]
        );
        let (url, headers) = target.http().unwrap();
        assert_eq!(url.query(), Some("api-version=2024-10-21"));
        assert!(!headers.contains_key("authorization"));
    }
}
