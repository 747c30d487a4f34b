//! Provider wire formats: building requests and reading responses for OpenAI and Anthropic.
//!
//! CONTRACT (used by transport.rs and executor.rs; keep these names and signatures):

pub mod anthropic;
pub mod openai;

use crate::secret::ApiKey;
use serde::Deserialize;

/// Which wire format a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
}

/// Per-run request parameters shared by every row.
#[derive(Debug, Clone, Default)]
pub struct RequestParams {
    pub model: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    /// A system prompt added to every row's messages.
    pub system: Option<String>,
}

/// One chat message as given by the dataset. `content` is a string or a list of content parts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: serde_json::Value,
}

/// A request ready to send: URL, headers (key included) and the JSON body bytes.
#[derive(Clone)]
pub struct PreparedRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// What a successful response (plain or assembled from a stream) carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Builds the HTTP request for one row.
/// OpenAI: `{base}/chat/completions` (base includes /v1), `Authorization: Bearer`.
/// Anthropic: `{base}/v1/messages`, `x-api-key`, `anthropic-version: 2023-06-01`,
/// system messages moved to the top-level `system`, `max_tokens` defaulted.
pub fn prepare(
    kind: ProviderKind,
    base: &str,
    key: &ApiKey,
    params: &RequestParams,
    messages: &[Message],
) -> PreparedRequest {
    match kind {
        ProviderKind::OpenAi => openai::prepare(base, key, params, messages),
        ProviderKind::Anthropic => anthropic::prepare(base, key, params, messages),
    }
}
