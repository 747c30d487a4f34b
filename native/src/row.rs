//! `RowResult`: the outcome of one row, as the executor hands it out, the run's log stores it
//! (`wal.rs`) and a poll's batch carries it (`batch.rs`).

use crate::error::ErrorType;
use crate::provider::Completion;
use serde::{Deserialize, Serialize};

/// The outcome of one row, after all its attempts (also a record of the run's log, `wal.rs`).
///
/// Fields added after the log's first version are optional in a record (`serde(default)`) and
/// left out of it when empty, so logs written before and after them read alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RowResult {
    pub row: u64,
    pub ok: bool,
    /// The first choice's text (its refusal when it has no content); with `n > 1` every
    /// choice's text is in `choices`.
    pub output: Option<String>,
    /// The model's refusal (OpenAI `message.refusal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The first choice's tool calls, a JSON array in OpenAI's shape (see
    /// `provider::Completion::tool_calls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<String>,
    /// Every choice's text in index order, when the answer has more than one (`n > 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// The first choice's `logprobs` object as JSON text, when the answer carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<String>,
    pub finish_reason: Option<String>,
    /// The whole prompt, cached or not (for Anthropic: input + cache reads + cache writes).
    pub prompt_tokens: Option<u64>,
    /// The whole reply, reasoning included.
    pub completion_tokens: Option<u64>,
    /// Of `completion_tokens`, those spent reasoning (OpenAI reasoning models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Of `prompt_tokens`, those read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_prompt_tokens: Option<u64>,
    /// Of `prompt_tokens`, those written to the prompt cache (Anthropic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
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
    /// The answer's JSON, when the run keeps it (`keep_raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    pub request_hash: String,
}

impl RowResult {
    /// Records a successful answer: `ok`, the completion's text, tool calls, choices, logprobs,
    /// finish reason, token counts and raw JSON, and the HTTP status. Shared by the live
    /// executor and the Batch API's results (`batch_api.rs`).
    pub fn set_completion(&mut self, completion: Completion, http_status: u16) {
        self.ok = true;
        self.output = Some(completion.text);
        self.refusal = completion.refusal;
        self.tool_calls = completion.tool_calls;
        self.choices = completion.choices;
        self.logprobs = completion.logprobs;
        self.finish_reason = completion.finish_reason;
        self.prompt_tokens = completion.prompt_tokens;
        self.completion_tokens = completion.completion_tokens;
        self.reasoning_tokens = completion.reasoning_tokens;
        self.cached_prompt_tokens = completion.cached_prompt_tokens;
        self.cache_write_tokens = completion.cache_write_tokens;
        self.raw = completion.raw;
        self.http_status = Some(http_status);
    }

    /// Records a failure: its type, HTTP status (if any answer came) and message (already
    /// redacted by the caller).
    pub fn set_error(&mut self, kind: ErrorType, http_status: Option<u16>, message: String) {
        self.ok = false;
        self.http_status = http_status;
        self.error_type = Some(kind);
        self.error = Some(message);
    }
}
