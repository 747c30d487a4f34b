//! The single-request model client: one chat request with retries, streamed pieces to a callback.
//!
//! Used by the Python `ModelClient` (through `python.rs`) and by the `model-client-rs` binary.
//! Base URLs and keys not given come from the environment, as in the CLI and the official SDKs.

use crate::error::{Error, ErrorType, Result};
use crate::provider::{
    self, Completion, Endpoint, Message, PreparedRequest, ProviderKind, RequestParams,
};
use crate::retry::{self, Backoff, Verdict};
use crate::secret::ApiKey;
use crate::transport::{self, AttemptError, Success};
use serde::Deserialize;
use std::time::Duration;
use tracing::Instrument;

/// The public OpenAI base (includes `/v1`; the client appends `/chat/completions`).
pub const OPENAI_BASE: &str = "https://api.openai.com/v1";
/// The public Anthropic base (no `/v1`; the client appends `/v1/messages`).
pub const ANTHROPIC_BASE: &str = "https://api.anthropic.com";

/// Idle keep-alive connections a client keeps per host when none is asked for.
pub const DEFAULT_POOL_SIZE: usize = 128;

/// Settings as the caller gives them (Python's `ModelConfig`, a request file); missing base URL
/// and key are looked up in the environment by [`ClientConfig::resolve`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub provider: ProviderKind,
    pub model: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_base: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    /// Azure: the `api-version` (else `OPENAI_API_VERSION`); the model is the deployment.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Retries of a transient failure (429, 5xx, timeouts, connection errors).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Seconds per attempt, covering connect, headers and the whole body or stream.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
}

fn default_max_retries() -> u32 {
    2
}
fn default_timeout() -> f64 {
    60.0
}

/// A resolved configuration: where to send, with which key, and how.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub provider: ProviderKind,
    pub api_base: String,
    pub api_key: ApiKey,
    pub params: RequestParams,
    /// Azure's `api-version`.
    pub api_version: Option<String>,
    pub max_retries: u32,
    pub timeout: Duration,
}

/// The environment variable holding `kind`'s key (the official SDKs' names).
pub fn key_env(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "OPENAI_API_KEY",
        ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
        ProviderKind::Azure => "AZURE_OPENAI_API_KEY",
    }
}

/// The environment variable holding `kind`'s base URL (Azure: the resource's endpoint).
pub fn base_env(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "OPENAI_BASE_URL",
        ProviderKind::Anthropic => "ANTHROPIC_BASE_URL",
        ProviderKind::Azure => "AZURE_OPENAI_ENDPOINT",
    }
}

/// The environment variable holding Azure's `api-version`, as the official SDK reads it.
pub const API_VERSION_ENV: &str = "OPENAI_API_VERSION";

impl ClientConfig {
    /// Parses [`ClientSettings`] JSON and resolves it against the process environment.
    pub fn from_json(text: &str) -> Result<Self> {
        let settings: ClientSettings = serde_json::from_str(text)?;
        Self::resolve(settings, |name| std::env::var(name).ok())
    }

    /// Fills the base URL and key from `env` where `settings` has none (or an empty one), then
    /// checks the numbers. A missing key is not an error here: [`ModelClient::send`] refuses it.
    pub fn resolve(settings: ClientSettings, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let kind = settings.provider;
        let given = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        let api_base = given(settings.api_base).or_else(|| given(env(base_env(kind))));
        let api_base = match (api_base, kind) {
            (Some(base), _) => base,
            (None, ProviderKind::OpenAi) => OPENAI_BASE.to_string(),
            (None, ProviderKind::Anthropic) => ANTHROPIC_BASE.to_string(),
            (None, ProviderKind::Azure) => {
                return Err(Error::Config(format!(
                    "api_base: the Azure endpoint is required (or set {})",
                    base_env(kind)
                )))
            }
        };
        let api_version = given(settings.api_version).or_else(|| given(env(API_VERSION_ENV)));
        if kind == ProviderKind::Azure && api_version.is_none() {
            return Err(Error::Config(format!(
                "api_version: required for azure (or set {API_VERSION_ENV})"
            )));
        }
        let api_key = given(settings.api_key)
            .or_else(|| given(env(key_env(kind))))
            .unwrap_or_default();
        if settings.model.trim().is_empty() {
            return Err(Error::Config("model: must not be empty".into()));
        }
        if !(settings.timeout.is_finite() && settings.timeout > 0.0) {
            return Err(Error::Config(
                "timeout: must be a positive number of seconds".into(),
            ));
        }
        Ok(Self {
            provider: kind,
            api_base: api_base.trim_end_matches('/').to_string(),
            api_key: ApiKey::new(api_key),
            params: RequestParams {
                model: settings.model,
                temperature: settings.temperature,
                max_tokens: settings.max_tokens,
                stream: settings.stream,
                system: None,
                extra: None,
            },
            api_version,
            max_retries: settings.max_retries,
            timeout: Duration::from_secs_f64(settings.timeout),
        })
    }

    /// Where the request goes (for Azure, the model names the deployment).
    pub fn endpoint(&self) -> Endpoint<'_> {
        let mut endpoint = Endpoint::new(self.provider, &self.api_base, &self.api_key);
        endpoint.deployment = Some(self.params.model.as_str());
        endpoint.api_version = self.api_version.as_deref();
        endpoint
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub completion: Completion,
    pub http_status: u16,
    /// Duration of the attempt that answered.
    pub latency: Duration,
    /// Time to the first streamed text (streaming only).
    pub ttft: Option<Duration>,
    /// Requests sent, retries included.
    pub attempts: u32,
}

/// A request that failed for good: not retryable, out of retries, or cut after text was
/// already handed out. The message is the provider's (prefixed `HTTP {status}: ` when a
/// response arrived), with the key redacted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ClientError {
    pub kind: ErrorType,
    /// The last response's status, when one arrived.
    pub status: Option<u16>,
    pub message: String,
    pub attempts: u32,
}

/// One HTTP connection pool and a retry policy; cheap to share (`Arc`) across many requests.
pub struct ModelClient {
    http: reqwest::Client,
    backoff: Backoff,
}

impl ModelClient {
    /// A client keeping up to `pool_size` idle connections per host.
    pub fn new(pool_size: usize) -> Result<Self> {
        let http = transport::try_build_client(pool_size)
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            backoff: Backoff::default(),
        })
    }

    /// The same client with another backoff (tests use short ones).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sends one request, retrying transient failures up to `config.max_retries` times, and
    /// hands each streamed text piece to `on_delta` as it arrives. Once a piece was handed out,
    /// a failure of that attempt is final: a retry would repeat text the caller already has.
    pub async fn send(
        &self,
        config: &ClientConfig,
        messages: &[Message],
        mut on_delta: impl FnMut(&str),
    ) -> Result<Response, ClientError> {
        let span = tracing::info_span!(
            "request",
            provider = config.provider.as_str(),
            model = %config.params.model,
            stream = config.params.stream,
        );
        async move {
            if config.api_key.is_empty() {
                let message = format!(
                    "no API key: pass api_key or set {}",
                    key_env(config.provider)
                );
                return Err(ClientError {
                    kind: ErrorType::Auth,
                    status: None,
                    message,
                    attempts: 0,
                });
            }
            let target = config.endpoint().target();
            let request =
                provider::prepare_parsed(config.provider, &target, &config.params, messages, None);
            let mut hooks = ClientAttempts {
                http: &self.http,
                config,
                request: &request,
                on_delta: &mut on_delta,
                streamed: false,
            };
            let Some(settled) =
                retry::until_settled(&self.backoff, config.max_retries, &mut hooks).await
            else {
                // Unreachable: these hooks never give a request up.
                return Err(ClientError {
                    kind: ErrorType::Cancelled,
                    status: None,
                    message: "the request was given up".into(),
                    attempts: 0,
                });
            };
            let latency_ms = settled.latency.as_secs_f64() * 1000.0;
            match settled.result {
                Ok(ok) => {
                    tracing::debug!(
                        attempt = settled.attempts,
                        status = ok.http_status,
                        latency_ms,
                        "answered"
                    );
                    Ok(Response {
                        completion: ok.completion,
                        http_status: ok.http_status,
                        latency: settled.latency,
                        ttft: ok.ttft,
                        attempts: settled.attempts,
                    })
                }
                Err(err) => {
                    tracing::warn!(
                        attempt = settled.attempts,
                        status = err.http_status,
                        cause = err.kind.as_str(),
                        latency_ms,
                        "failed"
                    );
                    Err(ClientError {
                        kind: err.kind,
                        status: err.http_status,
                        message: config.api_key.redact(&err.message),
                        attempts: settled.attempts,
                    })
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The model client's part of a request's retry loop ([`retry::until_settled`]): every failure
/// counts against `max_retries`, and a failure after streamed text was handed out is final.
struct ClientAttempts<'a, F> {
    http: &'a reqwest::Client,
    config: &'a ClientConfig,
    request: &'a PreparedRequest,
    on_delta: &'a mut F,
    /// The last attempt handed text out.
    streamed: bool,
}

impl<F: FnMut(&str)> retry::Hooks for ClientAttempts<'_, F> {
    async fn send(&mut self, attempt: u32) -> Option<std::result::Result<Success, AttemptError>> {
        let config = self.config;
        let mut streamed = false;
        let on_delta = &mut *self.on_delta;
        let outcome = transport::send_with(
            self.http,
            config.provider,
            self.request,
            config.params.stream,
            config.timeout,
            |piece| {
                streamed = true;
                on_delta(piece);
            },
        )
        .instrument(tracing::debug_span!("attempt", attempt))
        .await;
        self.streamed = streamed;
        Some(outcome)
    }

    fn failed(&mut self, _err: &AttemptError) -> Verdict {
        if self.streamed {
            // A retry would repeat text the caller already has.
            Verdict::Final
        } else {
            Verdict::Usual {
                counts: true,
                step: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockConfig, MockServer};
    use crate::runtime::runtime;

    fn settings(kind: ProviderKind) -> ClientSettings {
        serde_json::from_value(serde_json::json!({
            "provider": kind.as_str(),
            "model": "m",
        }))
        .expect("settings")
    }

    #[test]
    fn env_fills_base_and_key_and_explicit_values_win() {
        let env = |name: &str| match name {
            "OPENAI_BASE_URL" => Some("http://proxy/v1/".to_string()),
            "OPENAI_API_KEY" => Some("sk-env".to_string()),
            _ => None,
        };
        let config = ClientConfig::resolve(settings(ProviderKind::OpenAi), env).expect("ok");
        assert_eq!(config.api_base, "http://proxy/v1");
        assert_eq!(config.api_key.expose(), "sk-env");
        assert_eq!(
            (config.max_retries, config.timeout),
            (2, Duration::from_secs(60))
        );
        let mut explicit = settings(ProviderKind::OpenAi);
        explicit.api_base = Some("http://mine/v1".into());
        explicit.api_key = Some("sk-mine".into());
        let config = ClientConfig::resolve(explicit, env).expect("ok");
        assert_eq!(
            (config.api_base.as_str(), config.api_key.expose()),
            ("http://mine/v1", "sk-mine")
        );
        let config = ClientConfig::resolve(settings(ProviderKind::Anthropic), env).expect("ok");
        assert_eq!(config.api_base, ANTHROPIC_BASE);
        assert!(config.api_key.is_empty());
        let mut bad = settings(ProviderKind::OpenAi);
        bad.timeout = 0.0;
        assert!(ClientConfig::resolve(bad, env).is_err());
        assert!(ClientConfig::from_json(r#"{"provider":"openai","model":"m","top_k":1}"#).is_err());
    }

    fn mock(config: serde_json::Value) -> MockServer {
        let config: MockConfig = serde_json::from_value(config).expect("mock config");
        MockServer::start(config, "127.0.0.1:0".parse().expect("addr")).expect("mock")
    }

    fn config_for(
        server: &MockServer,
        kind: ProviderKind,
        stream: bool,
        key: &str,
    ) -> ClientConfig {
        let base = match kind {
            ProviderKind::OpenAi => format!("http://{}/v1", server.local_addr()),
            ProviderKind::Anthropic | ProviderKind::Azure => {
                format!("http://{}", server.local_addr())
            }
        };
        let mut s = settings(kind);
        s.api_base = Some(base);
        s.api_key = Some(key.into());
        s.stream = stream;
        s.max_retries = 1;
        if kind == ProviderKind::Azure {
            s.api_version = Some("2024-10-21".into());
        }
        ClientConfig::resolve(s, |_| None).expect("config")
    }

    fn user(text: &str) -> Vec<Message> {
        vec![Message {
            role: "user".into(),
            content: serde_json::json!(text),
        }]
    }

    #[test]
    fn streams_pieces_and_assembles_the_reply() {
        let server = mock(serde_json::json!({}));
        let client = ModelClient::new(4).expect("client");
        for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
            for stream in [false, true] {
                let config = config_for(&server, kind, stream, "mock-key");
                let mut pieces = Vec::new();
                let response = runtime()
                    .block_on(client.send(&config, &user("three small words"), |p| {
                        pieces.push(p.to_string())
                    }))
                    .expect("answer");
                assert_eq!(response.completion.text, "Echo: three small words");
                assert_eq!(response.attempts, 1);
                if stream {
                    assert!(pieces.len() > 1, "{pieces:?}");
                    assert_eq!(pieces.concat(), response.completion.text);
                } else {
                    assert!(pieces.is_empty());
                }
            }
        }
    }

    #[test]
    fn azure_reads_its_environment_and_reaches_the_deployment() {
        let env = |name: &str| match name {
            "AZURE_OPENAI_ENDPOINT" => Some("https://r.openai.azure.com".to_string()),
            "AZURE_OPENAI_API_KEY" => Some("az-key".to_string()),
            "OPENAI_API_VERSION" => Some("2024-10-21".to_string()),
            _ => None,
        };
        let config = ClientConfig::resolve(settings(ProviderKind::Azure), env).expect("ok");
        assert_eq!(config.api_key.expose(), "az-key");
        assert_eq!(
            config.endpoint().target().url,
            "https://r.openai.azure.com/openai/deployments/m/chat/completions?api-version=2024-10-21"
        );
        let no_version = |name: &str| env(name).filter(|_| name != "OPENAI_API_VERSION");
        assert!(ClientConfig::resolve(settings(ProviderKind::Azure), no_version).is_err());
        assert!(ClientConfig::resolve(settings(ProviderKind::Azure), |_| None).is_err());

        let server = mock(serde_json::json!({}));
        let client = ModelClient::new(2).expect("client");
        for stream in [false, true] {
            let config = config_for(&server, ProviderKind::Azure, stream, "mock-key");
            let response = runtime()
                .block_on(client.send(&config, &user("via azure"), |_| {}))
                .expect("answer");
            assert_eq!(response.completion.text, "Echo: via azure");
        }
        assert_eq!(
            server.stats().by_path["/openai/deployments/m/chat/completions"],
            2
        );
    }

    #[test]
    fn a_stream_answered_with_json_still_hands_its_text_out() {
        // A gateway answering `stream: true` with a whole JSON body: the caller, which prints
        // the stream from its pieces, gets the text as one piece.
        let server = mock(serde_json::json!({"stream_as_json": true}));
        let client = ModelClient::new(2).expect("client");
        for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
            let config = config_for(&server, kind, true, "mock-key");
            let mut pieces = Vec::new();
            let response = runtime()
                .block_on(client.send(&config, &user("two words"), |p| pieces.push(p.to_string())))
                .expect("answer");
            assert_eq!(pieces, ["Echo: two words"]);
            assert_eq!(response.completion.text, "Echo: two words");
        }
        assert_eq!(server.stats().streamed, 0);
    }

    #[test]
    fn failures_are_typed_redacted_and_retried_only_when_transient() {
        let server = mock(serde_json::json!({}));
        let client = ModelClient::new(4).expect("client").with_backoff(Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        });
        let secret = "sk-wrong-key-0123456789abcdef";
        let config = config_for(&server, ProviderKind::OpenAi, false, secret);
        let err = runtime()
            .block_on(client.send(&config, &user("hi"), |_| {}))
            .expect_err("401");
        assert_eq!(
            (err.kind, err.status, err.attempts),
            (ErrorType::Auth, Some(401), 1)
        );
        assert!(!err.to_string().contains("0123456789"), "{err}");

        let config = config_for(&server, ProviderKind::Anthropic, true, "mock-key");
        let err = runtime()
            .block_on(client.send(&config, &user("x [[bad]]"), |_| {}))
            .expect_err("400");
        assert_eq!((err.kind, err.attempts), (ErrorType::BadRequest, 1));

        let faulty = mock(serde_json::json!({"fault_rate": 1.0, "faults": ["500"]}));
        let config = config_for(&faulty, ProviderKind::OpenAi, false, "mock-key");
        let err = runtime()
            .block_on(client.send(&config, &user("hi"), |_| {}))
            .expect_err("500");
        assert_eq!((err.kind, err.attempts), (ErrorType::ServerError, 2));

        let mut no_key = config_for(&server, ProviderKind::OpenAi, false, "");
        no_key.api_key = ApiKey::default();
        let err = runtime()
            .block_on(client.send(&no_key, &user("hi"), |_| {}))
            .expect_err("no key");
        assert_eq!((err.kind, err.attempts), (ErrorType::Auth, 0));
        assert!(err.message.contains("OPENAI_API_KEY"));
    }
}
