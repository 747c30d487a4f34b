//! What the mock needs from a chat request once a provider module has validated it.

use serde_json::Value;

/// A validated chat request, provider-neutral.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`: send a final usage chunk.
    pub include_usage: bool,
    pub max_tokens: Option<u32>,
    /// Text of the last user message ("" when there is none).
    pub last_user_text: String,
    /// Words across every message text plus the system prompt.
    pub prompt_tokens: u64,
}

/// JSON type names as the providers' validation messages spell them.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Accumulates message texts into the last-user text and the prompt word count.
#[derive(Default)]
pub(crate) struct TextTally {
    pub prompt_tokens: u64,
    pub last_user_text: Option<String>,
}

impl TextTally {
    /// Adds one message's text; `is_user` marks it as the latest user message so far.
    pub(crate) fn add(&mut self, text: String, is_user: bool) {
        self.prompt_tokens += super::reply::count_words(&text) as u64;
        if is_user {
            self.last_user_text = Some(text);
        }
    }
}

/// The mock's answer to one request, before a provider module renders it.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    /// Provider-style id ("chatcmpl-…" / "msg_…").
    pub id: String,
    /// Unix seconds (OpenAI `created`).
    pub created: u64,
    pub text: String,
    /// Whether `max_tokens` cut the reply.
    pub truncated: bool,
    pub completion_tokens: u64,
}
