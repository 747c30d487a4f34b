//! Provider wire formats: building requests and reading responses for OpenAI and Anthropic.
//!
//! CONTRACT (used by transport.rs and executor.rs; keep these names and signatures):
//! `prepare`, `parse_response`, `error_message`, `Accumulator`, `StreamStep`, `StreamFailure`,
//! `estimate_tokens`, `request_hash`, `classify_status`; for a row's [`Messages`] and its own
//! [`Params`]: `prepare_row`, `estimate_row_tokens`.
//!
//! Body fields beyond the builder's own (`seed`, `tools`, `response_format`, ...) come from the
//! run's params ([`RequestParams::extra`]) and a row's params; they are written after the
//! builder's fields, and a field given there replaces the builder's (see [`Extra`]).

pub mod anthropic;
pub mod openai;
pub mod raw;

use crate::error::ErrorType;
use crate::secret::ApiKey;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Which provider a run talks to. Azure OpenAI speaks OpenAI's wire format (bodies, answers,
/// streams, errors) at its own URL and with its own key header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Azure,
}

impl ProviderKind {
    /// The provider's name as users write it (`openai`, `anthropic`, `azure`), e.g. in log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Azure => "azure",
        }
    }

    /// Whether requests and answers are OpenAI Chat Completions JSON.
    pub fn speaks_openai(self) -> bool {
        matches!(self, ProviderKind::OpenAi | ProviderKind::Azure)
    }
}

/// Body fields given by the user (a run's params, a row's params): a JSON object.
pub type Params = serde_json::Map<String, serde_json::Value>;

/// Fields the request builder owns and params may not set: the row's messages, and `stream`,
/// which decides how the answer is read.
pub const RESERVED_PARAMS: [&str; 2] = ["messages", "stream"];

/// Checks user-given params: a JSON object without [`RESERVED_PARAMS`]. `what` names them in
/// the message ("params", "row 3: params").
pub fn check_params(params: &Params, what: &str) -> Result<(), String> {
    match RESERVED_PARAMS
        .iter()
        .find(|name| params.contains_key(**name))
    {
        Some(name) => Err(format!(
            "{what}: {name:?} is set by the request builder and cannot be a parameter"
        )),
        None => Ok(()),
    }
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
    /// The run's own body fields, merged into every request after the builder's (see
    /// [`Extra`]); `None` when there are none.
    pub extra: Option<Arc<Params>>,
}

/// Whether `model` is of an OpenAI reasoning family: `o1`, `o3`, `o4` (any `o` followed by
/// digits) and `gpt-5` (also `gpt-5.1`, ...), alone or followed by a `-suffix` (`o4-mini`,
/// `o3-mini-2025-01-31`, `gpt-5-mini-2025-08-07`), case-insensitive, after any `provider/`
/// prefix a gateway adds (`openai/o3`).
///
/// These models refuse `max_tokens` (they take `max_completion_tokens`, which counts reasoning
/// tokens too) and any `temperature` but the default 1. For them the OpenAI and Azure request
/// builders send the run's max tokens as `max_completion_tokens`; every other model gets
/// `max_tokens`, the field OpenAI-compatible servers (vLLM, Ollama, gateways) know. The Python
/// preflight reads the same rule (`_native.is_reasoning_model`), and so does the mock server.
pub fn is_reasoning_model(model: &str) -> bool {
    let name = model.rsplit('/').next().unwrap_or(model).as_bytes();
    let ends_family = |rest: &[u8]| rest.is_empty() || rest[0] == b'-';
    match name {
        [b'o' | b'O', rest @ ..] => {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            digits > 0 && ends_family(&rest[digits..])
        }
        _ if name.len() >= 5 && name[..5].eq_ignore_ascii_case(b"gpt-5") => {
            let rest = &name[5..];
            // gpt-5, gpt-5-mini, gpt-5.1, gpt-5.1-codex; not gpt-50.
            ends_family(rest) || (rest[0] == b'.' && rest.len() > 1 && rest[1].is_ascii_digit())
        }
        _ => false,
    }
}

/// A request's own fields beyond the builder's: the run's params, then a row's, the row's
/// winning where both set a field. A field set here is left out by the builder and written
/// from here instead, so the body never holds a key twice.
#[derive(Clone, Copy, Default)]
pub(crate) struct Extra<'a> {
    run: Option<&'a Params>,
    row: Option<&'a Params>,
}

impl<'a> Extra<'a> {
    pub(crate) fn new(run: Option<&'a Params>, row: Option<&'a Params>) -> Self {
        Self {
            run: run.filter(|p| !p.is_empty()),
            row: row.filter(|p| !p.is_empty()),
        }
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.run.is_some_and(|p| p.contains_key(key))
            || self.row.is_some_and(|p| p.contains_key(key))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a serde_json::Value> {
        self.row
            .and_then(|p| p.get(key))
            .or_else(|| self.run.and_then(|p| p.get(key)))
    }

    /// The model a params entry names, if any (Batch API lines carry their own).
    pub(crate) fn model(&self) -> Option<&'a str> {
        self.get("model").and_then(serde_json::Value::as_str)
    }

    /// An explicit reply budget (`max_completion_tokens`, else `max_tokens`), if any.
    pub(crate) fn max_tokens(&self) -> Option<u64> {
        ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|key| self.get(key)?.as_u64())
    }

    /// Writes the fields into `body`, a serialized JSON object with at least one field.
    pub(crate) fn write_into(&self, body: &mut Vec<u8>) {
        if self.run.is_none() && self.row.is_none() {
            return;
        }
        if body.last() != Some(&b'}') {
            return;
        }
        body.pop();
        let row = self.row;
        let run_only = self
            .run
            .into_iter()
            .flatten()
            .filter(|(key, _)| !row.is_some_and(|r| r.contains_key(*key)));
        for (key, value) in run_only.chain(row.into_iter().flatten()) {
            if body.len() > 1 {
                body.push(b',');
            }
            // Keys and JSON values always serialize.
            let _ = serde_json::to_writer(&mut *body, key);
            body.push(b':');
            let _ = serde_json::to_writer(&mut *body, value);
        }
        body.push(b'}');
    }
}

/// One chat message as given by the dataset. `content` is a string or a list of content parts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: serde_json::Value,
}

/// Roles that carry instructions for the whole conversation (`developer` is OpenAI's newer
/// name for `system`); the Messages API takes them only as the top-level `system` string.
pub(crate) fn is_system_role(role: &str) -> bool {
    role == "system" || role == "developer"
}

/// A request ready to send: where it goes (shared by a run's rows) and the JSON body bytes.
#[derive(Clone)]
pub struct PreparedRequest {
    pub target: Arc<Target>,
    pub body: Bytes,
}

/// Where a run's requests go and the headers they carry (the key among them): the same for
/// every row, so built once per run rather than per request.
pub struct Target {
    pub url: String,
    /// The provider's headers (the key among them).
    pub headers: Vec<(&'static str, String)>,
    /// The user's extra headers, sent after the provider's (replacing one of the same name).
    pub extra_headers: Vec<(String, String)>,
    /// Keep each answer's JSON in [`Completion::raw`].
    pub keep_raw: bool,
    /// `url` parsed and `headers` validated, as the HTTP client takes them; made on first use.
    http: OnceLock<Result<(reqwest::Url, HeaderMap), String>>,
}

impl Target {
    pub fn new(url: String, headers: Vec<(&'static str, String)>) -> Self {
        Self {
            url,
            headers,
            extra_headers: Vec::new(),
            keep_raw: false,
            http: OnceLock::new(),
        }
    }

    /// The URL and headers for reqwest, or why they are unusable (never a header's value).
    pub fn http(&self) -> Result<&(reqwest::Url, HeaderMap), &str> {
        self.http
            .get_or_init(|| {
                let url = reqwest::Url::parse(&self.url)
                    .map_err(|e| format!("invalid URL {}: {e}", self.url))?;
                let mut headers =
                    HeaderMap::with_capacity(self.headers.len() + self.extra_headers.len());
                for (name, value) in &self.headers {
                    let value = HeaderValue::from_str(value)
                        .map_err(|_| format!("invalid value for header {name}"))?;
                    headers.insert(HeaderName::from_static(name), value);
                }
                for (name, value) in &self.extra_headers {
                    let (name, value) = header(name, value)?;
                    headers.insert(name, value);
                }
                Ok((url, headers))
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Every credential this target sends: the key, and the values of extra headers whose
    /// name looks like a credential (see [`crate::secret::is_credential_header`]).
    pub fn credentials(&self) -> impl Iterator<Item = &str> {
        let key = self.headers.iter().filter_map(|(name, value)| match *name {
            "authorization" => Some(value.strip_prefix("Bearer ").unwrap_or(value)),
            "x-api-key" | "api-key" => Some(value.as_str()),
            _ => None,
        });
        let extra = self
            .extra_headers
            .iter()
            .filter(|(name, _)| crate::secret::is_credential_header(name))
            .map(|(_, value)| value.strip_prefix("Bearer ").unwrap_or(value));
        key.chain(extra)
    }
}

/// A user's header as reqwest takes it, or why it is unusable (naming it, never its value).
pub fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let header_name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    let header_value =
        HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
    Ok((header_name, header_value))
}

/// The [`Target`] of a run's requests (for Azure, `base` is then the deployment's URL and no
/// `api-version` is added: see [`Endpoint`]).
pub fn target(kind: ProviderKind, base: &str, key: &ApiKey) -> Arc<Target> {
    Endpoint::new(kind, base, key).target()
}

/// Everything that decides where a run's requests go and what they carry besides the body.
pub struct Endpoint<'a> {
    pub kind: ProviderKind,
    pub base: &'a str,
    pub key: &'a ApiKey,
    /// Azure: the deployment (the run's model) and the `api-version` query parameter. The URL
    /// is then `{base}/openai/deployments/{deployment}/chat/completions?api-version=...`.
    pub deployment: Option<&'a str>,
    pub api_version: Option<&'a str>,
    pub headers: &'a [(String, String)],
    pub keep_raw: bool,
}

impl<'a> Endpoint<'a> {
    pub fn new(kind: ProviderKind, base: &'a str, key: &'a ApiKey) -> Self {
        Self {
            kind,
            base,
            key,
            deployment: None,
            api_version: None,
            headers: &[],
            keep_raw: false,
        }
    }

    pub fn target(&self) -> Arc<Target> {
        let mut target = match self.kind {
            ProviderKind::OpenAi => openai::target(self.base, self.key),
            ProviderKind::Anthropic => anthropic::target(self.base, self.key),
            ProviderKind::Azure => {
                openai::azure_target(self.base, self.deployment, self.api_version, self.key)
            }
        };
        target.extra_headers = self.headers.to_vec();
        target.keep_raw = self.keep_raw;
        Arc::new(target)
    }
}

/// What a successful response (plain or assembled from a stream) carries.
///
/// Token counts follow OpenAI's meaning for both providers: `prompt_tokens` is the whole
/// prompt, cached or not (Anthropic's `input_tokens` + `cache_read_input_tokens` +
/// `cache_creation_input_tokens`), and `cached_prompt_tokens` / `cache_write_tokens` are parts
/// of it; `completion_tokens` includes `reasoning_tokens`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The first choice's text (its refusal when it has no content).
    pub text: String,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// OpenAI `message.refusal` of the first choice.
    pub refusal: Option<String>,
    /// The first choice's tool calls as a JSON array in OpenAI's shape (`[{"id", "type":
    /// "function", "function": {"name", "arguments"}}]`; Anthropic `tool_use` blocks are
    /// converted to it, `arguments` being their `input` as JSON text).
    pub tool_calls: Option<String>,
    /// OpenAI `completion_tokens_details.reasoning_tokens`.
    pub reasoning_tokens: Option<u64>,
    /// OpenAI `prompt_tokens_details.cached_tokens`; Anthropic `cache_read_input_tokens`.
    pub cached_prompt_tokens: Option<u64>,
    /// Anthropic `cache_creation_input_tokens`.
    pub cache_write_tokens: Option<u64>,
    /// Every choice's text (as [`Completion::text`]: content, else refusal), in index order,
    /// when the answer has more than one choice (OpenAI `n > 1`); `None` for one choice.
    pub choices: Option<Vec<String>>,
    /// The first choice's `logprobs` object as JSON text (`{"content": [...]}`), when the
    /// answer carries one (OpenAI `logprobs: true`).
    pub logprobs: Option<String>,
    /// The answer's JSON as received (a streamed answer: the assembled message), when the run
    /// keeps it ([`Target::keep_raw`]).
    pub raw: Option<String>,
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
    prepare_parsed(kind, &target(kind, base, key), params, messages, None)
}

/// [`prepare`] to a [`Target`] built once, with a row's own params (`row`) if any.
pub fn prepare_parsed(
    kind: ProviderKind,
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &[Message],
    row: Option<&Params>,
) -> PreparedRequest {
    match kind {
        ProviderKind::OpenAi | ProviderKind::Azure => {
            openai::prepare(target, params, messages, row)
        }
        ProviderKind::Anthropic => anthropic::prepare(target, params, messages, row),
    }
}

/// A row's messages: parsed, or the JSON text the runner rendered ([`raw::RawMessages`]).
#[derive(Debug)]
pub enum Messages {
    Parsed(Vec<Message>),
    Json(raw::RawMessages),
}

impl Messages {
    /// The runner's JSON text, kept as it is when it has the plain shape, else parsed.
    pub fn from_json(text: String) -> Result<Self, serde_json::Error> {
        match raw::RawMessages::new(text) {
            Ok(raw) => Ok(Messages::Json(raw)),
            Err(text) => serde_json::from_str(&text).map(Messages::Parsed),
        }
    }
}

/// What a row hands the executor: its messages and, optionally, its own params.
#[derive(Debug)]
pub struct RowPayload {
    pub messages: Messages,
    /// Body fields for this row only, over the run's (may set `model`); `None` when absent.
    pub params: Option<Params>,
}

impl RowPayload {
    /// Reads a row's payload: a JSON array of messages (the common form, kept as text when
    /// plain: see [`Messages::from_json`]), or an object `{"messages": [...], "params": {...}}`.
    pub fn from_json(text: String) -> Result<Self, String> {
        if !text.trim_start().starts_with('{') {
            let messages = Messages::from_json(text).map_err(|e| e.to_string())?;
            return Ok(Self {
                messages,
                params: None,
            });
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            messages: Box<serde_json::value::RawValue>,
            #[serde(default)]
            params: Option<Params>,
        }
        let object: Object = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let params = object.params.filter(|p| !p.is_empty());
        if let Some(params) = &params {
            check_params(params, "params")?;
        }
        let messages =
            Messages::from_json(object.messages.get().to_string()).map_err(|e| e.to_string())?;
        Ok(Self { messages, params })
    }
}

/// [`prepare`] for a row's [`Messages`] and params; text messages go into the body as they are.
pub fn prepare_row(
    kind: ProviderKind,
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &Messages,
    row: Option<&Params>,
) -> PreparedRequest {
    match (messages, kind) {
        (Messages::Parsed(messages), _) => prepare_parsed(kind, target, params, messages, row),
        (Messages::Json(raw), ProviderKind::OpenAi | ProviderKind::Azure) => {
            openai::prepare_raw(target, params, raw, row)
        }
        (Messages::Json(raw), ProviderKind::Anthropic) => {
            anthropic::prepare_raw(target, params, raw, row)
        }
    }
}

/// [`estimate_tokens`] for a row's [`Messages`] and params.
pub fn estimate_row_tokens(
    kind: ProviderKind,
    messages: &Messages,
    params: &RequestParams,
    row: Option<&Params>,
) -> u32 {
    let extra = Extra::new(params.extra.as_deref(), row);
    match messages {
        Messages::Parsed(messages) => {
            let chars = messages.iter().map(|m| content_chars(&m.content)).sum();
            estimate(kind, chars, messages.len() as u64, params, extra)
        }
        Messages::Json(raw) => estimate(kind, raw.chars, raw.count, params, extra),
    }
}

/// Reads a non-streaming 2xx body into a [`Completion`]; `Err` explains what was wrong with it.
pub fn parse_response(kind: ProviderKind, body: &[u8]) -> Result<Completion, String> {
    match kind {
        ProviderKind::OpenAi | ProviderKind::Azure => openai::parse_response(body),
        ProviderKind::Anthropic => anthropic::parse_response(body),
    }
}

/// The provider's own message from an error body, else the body itself, shortened.
pub fn error_message(kind: ProviderKind, body: &[u8]) -> String {
    match kind {
        ProviderKind::OpenAi | ProviderKind::Azure => openai::error_message(body),
        ProviderKind::Anthropic => anthropic::error_message(body),
    }
}

/// Maps a non-2xx HTTP status (and its body, for quota exhaustion) to an [`ErrorType`].
///
/// Quota exhaustion hides behind ordinary statuses (OpenAI: 429 `insufficient_quota`;
/// Anthropic: 400 "credit balance is too low" / `billing_error`), and must stop the run
/// instead of being retried, so the body is inspected for those statuses only.
pub fn classify_status(kind: ProviderKind, status: u16, body: &[u8]) -> ErrorType {
    match status {
        401 | 403 => ErrorType::Auth,
        400 | 402 | 429 if is_quota_body(kind, body) => ErrorType::Quota,
        402 => ErrorType::Quota,
        429 => ErrorType::RateLimited,
        408 => ErrorType::Timeout,
        409 => ErrorType::Conflict,
        404 => ErrorType::NotFound,
        529 => ErrorType::Overloaded,
        // OpenAI sheds load with a 503 "The server is overloaded or not ready yet."
        503 if mentions_overload(body) => ErrorType::Overloaded,
        500..=599 => ErrorType::ServerError,
        400..=499 => ErrorType::BadRequest,
        // 1xx/3xx as a final answer: not something either API sends.
        _ => ErrorType::InvalidResponse,
    }
}

fn mentions_overload(body: &[u8]) -> bool {
    let head = &body[..body.len().min(2048)];
    String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .contains("overloaded")
}

/// Whether an error body says the account is out of credit: an error `type` or `code` among
/// the provider's quota names, or a message holding one of its quota phrases.
fn is_quota_body(kind: ProviderKind, body: &[u8]) -> bool {
    let (names, phrases) = match kind {
        ProviderKind::OpenAi | ProviderKind::Azure => (openai::QUOTA_NAMES, openai::QUOTA_PHRASES),
        ProviderKind::Anthropic => (anthropic::QUOTA_NAMES, anthropic::QUOTA_PHRASES),
    };
    let fields = error_fields(body);
    let named = fields.as_ref().is_some_and(|f| {
        [f.kind.as_deref(), f.code.as_deref()]
            .into_iter()
            .flatten()
            .any(|name| names.contains(&name))
    });
    let message = match &fields {
        Some(f) => f.message.to_ascii_lowercase(),
        None => String::from_utf8_lossy(&body[..body.len().min(2048)]).to_ascii_lowercase(),
    };
    named || phrases.iter().any(|phrase| message.contains(phrase))
}

/// What one server-sent event did to a stream being assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStep {
    /// Nothing visible changed (metadata, usage, ping).
    Continue,
    /// This many bytes of text were appended to the completion.
    Delta(usize),
    /// The provider's final event: stop reading.
    Done,
}

/// A stream that failed: an error event from the provider, a malformed event, or an early end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StreamFailure {
    /// How the retry policy should treat it (`IncompleteStream`, `Overloaded`, ...).
    pub kind: ErrorType,
    /// What happened, for the output's `error` column.
    pub message: String,
}

impl StreamFailure {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Assembles a streamed completion for either provider, event by event.
#[derive(Debug)]
pub enum Accumulator {
    OpenAi(openai::StreamAccumulator),
    Anthropic(anthropic::StreamAccumulator),
}

impl Accumulator {
    pub fn new(kind: ProviderKind) -> Self {
        Self::keeping_raw(kind, false)
    }

    /// An accumulator that also assembles the whole message as JSON ([`Completion::raw`]).
    pub fn keeping_raw(kind: ProviderKind, keep_raw: bool) -> Self {
        match kind {
            ProviderKind::OpenAi | ProviderKind::Azure => {
                Accumulator::OpenAi(openai::StreamAccumulator::keeping_raw(keep_raw))
            }
            ProviderKind::Anthropic => {
                Accumulator::Anthropic(anthropic::StreamAccumulator::keeping_raw(keep_raw))
            }
        }
    }

    /// Feeds one event (`event` is the SSE event name, `message` when the server sent none).
    pub fn on_event(&mut self, event: &str, data: &str) -> Result<StreamStep, StreamFailure> {
        match self {
            Accumulator::OpenAi(acc) => acc.on_event(event, data),
            Accumulator::Anthropic(acc) => acc.on_event(event, data),
        }
    }

    /// The text so far; after `Delta(n)`, its last `n` bytes are the new piece.
    pub fn text(&self) -> &str {
        match self {
            Accumulator::OpenAi(acc) => acc.text(),
            Accumulator::Anthropic(acc) => acc.text(),
        }
    }

    /// The completion, or `IncompleteStream` when the final event never came.
    pub fn finish(self) -> Result<Completion, StreamFailure> {
        match self {
            Accumulator::OpenAi(acc) => acc.finish(),
            Accumulator::Anthropic(acc) => acc.finish(),
        }
    }
}

/// `max_tokens` Anthropic requires and we send when the run sets none; also what
/// [`estimate_tokens`] charges for the reply then.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Tokens a request may use, for charging the TPM limiter before sending it.
///
/// Like the providers' own limiters, this counts the prompt (about 4 characters a token, plus a
/// few tokens of framing per message) and the whole `max_tokens` budget, because the reply's
/// length is unknown until it arrives. With no `max_tokens`, [`DEFAULT_MAX_TOKENS`] is charged.
pub fn estimate_tokens(kind: ProviderKind, messages: &[Message], params: &RequestParams) -> u32 {
    let chars = messages.iter().map(|m| content_chars(&m.content)).sum();
    let extra = Extra::new(params.extra.as_deref(), None);
    estimate(kind, chars, messages.len() as u64, params, extra)
}

/// The estimate for `count` messages holding `chars` characters of text.
fn estimate(
    kind: ProviderKind,
    chars: u64,
    count: u64,
    params: &RequestParams,
    extra: Extra<'_>,
) -> u32 {
    const PER_MESSAGE: u64 = 4;
    const PER_REQUEST: u64 = 3;
    let system = params.system.as_deref();
    let chars = chars + system.map_or(0, |s| s.chars().count() as u64);
    let framing = PER_REQUEST + PER_MESSAGE * (count + u64::from(system.is_some()));
    // OpenAI counts max_tokens only when it is sent; Anthropic always sends one (its default).
    // A budget given in params is the one sent.
    let reply = match (kind, extra.max_tokens(), params.max_tokens) {
        (_, Some(n), _) => n,
        (_, None, Some(n)) => u64::from(n),
        (ProviderKind::Anthropic, None, None) => u64::from(DEFAULT_MAX_TOKENS),
        (ProviderKind::OpenAi | ProviderKind::Azure, None, None) => 0,
    };
    let total = chars.div_ceil(4) + framing + reply;
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// Characters of text in a message's content: a string, or the `text` of its parts.
pub(crate) fn content_chars(content: &serde_json::Value) -> u64 {
    match content {
        serde_json::Value::String(s) => s.chars().count() as u64,
        serde_json::Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("text") {
                Some(serde_json::Value::String(s)) => s.chars().count() as u64,
                // Images and other parts: a rough flat charge rather than their base64 length.
                _ => 256,
            })
            .sum(),
        serde_json::Value::Null => 0,
        other => other.to_string().chars().count() as u64,
    }
}

/// A stable id for a request body (hex SHA-256, first 32 characters), for caching and resume.
pub fn request_hash(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut hex = String::with_capacity(32);
    for byte in &digest[..16] {
        use fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The `error` object both providers put in error bodies (and in mid-stream error events).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ErrorFields {
    /// `type` (Anthropic, OpenAI).
    pub kind: Option<String>,
    /// `code` (OpenAI; a string, a number or null depending on the provider or proxy).
    pub code: Option<String>,
    pub message: String,
}

/// Finds the `error` object in an error body, if it is JSON with one.
pub(crate) fn error_fields(body: &[u8]) -> Option<ErrorFields> {
    #[derive(Deserialize)]
    struct Envelope {
        error: serde_json::Value,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    error_object(&envelope.error)
}

/// Reads an `error` value: usually an object with type/code/message, sometimes just a string.
pub(crate) fn error_object(value: &serde_json::Value) -> Option<ErrorFields> {
    use serde_json::Value;
    match value {
        Value::String(message) => Some(ErrorFields {
            message: message.clone(),
            ..ErrorFields::default()
        }),
        Value::Object(map) => {
            let text = |key: &str| match map.get(key)? {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            };
            Some(ErrorFields {
                kind: text("type"),
                code: text("code"),
                message: text("message").unwrap_or_default(),
            })
        }
        _ => None,
    }
}

/// Shared body of the providers' `error_message`: `type: message`, else the raw body, shortened.
pub(crate) fn describe_error_body(body: &[u8]) -> String {
    match error_fields(body) {
        Some(fields) if !fields.message.is_empty() => match fields.kind.or(fields.code) {
            Some(kind) => truncate(&format!("{kind}: {}", fields.message), 1000),
            None => truncate(&fields.message, 1000),
        },
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(empty body)".to_string()
            } else {
                truncate(text, 300)
            }
        }
    }
}

/// Shortens `text` to at most `max` bytes on a char boundary, marking the cut.
/// The start of a body, for messages about a response that did not parse.
pub(crate) fn snippet(body: &[u8]) -> String {
    truncate(&String::from_utf8_lossy(body), 200)
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A message as sent: dataset messages are borrowed, the run's system prompt is a plain string.
#[derive(Serialize)]
pub(crate) struct OutMessage<'a> {
    pub role: &'a str,
    pub content: Content<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Content<'a> {
    Text(&'a str),
    Json(&'a serde_json::Value),
}

/// Usage counts as both providers name them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Usage {
    /// OpenAI: the whole prompt. Anthropic (`input_tokens`): the part neither read from nor
    /// written to the cache.
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

/// One tool call in OpenAI's shape, for the `tool_calls` JSON array.
pub(crate) fn tool_call_json(id: &str, name: &str, arguments: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(role: &str, content: serde_json::Value) -> Message {
        Message {
            role: role.into(),
            content,
        }
    }

    const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const OPENAI_RATE: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    const ANTHROPIC_CREDIT: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
    const ANTHROPIC_BILLING: &str =
        r#"{"type":"error","error":{"type":"billing_error","message":"Billing issue"}}"#;
    const ANTHROPIC_BAD: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;

    #[test]
    fn classify_status_table() {
        use ErrorType::*;
        use ProviderKind::{Anthropic, OpenAi};
        let cases: &[(ProviderKind, u16, &str, ErrorType)] = &[
            (OpenAi, 401, "", Auth),
            (OpenAi, 403, "", Auth),
            (Anthropic, 401, "", Auth),
            (Anthropic, 403, ANTHROPIC_BILLING, Auth),
            (OpenAi, 429, OPENAI_QUOTA, Quota),
            (OpenAi, 429, "You exceeded your current quota", Quota),
            (OpenAi, 429, OPENAI_RATE, RateLimited),
            (OpenAi, 429, "", RateLimited),
            (Anthropic, 429, "", RateLimited),
            (Anthropic, 400, ANTHROPIC_CREDIT, Quota),
            (Anthropic, 400, ANTHROPIC_BILLING, Quota),
            (Anthropic, 400, ANTHROPIC_BAD, BadRequest),
            (OpenAi, 400, ANTHROPIC_BAD, BadRequest),
            (OpenAi, 402, "", Quota),
            (OpenAi, 408, "", Timeout),
            (OpenAi, 409, "", Conflict),
            (OpenAi, 404, "", NotFound),
            (OpenAi, 413, "", BadRequest),
            (OpenAi, 422, "", BadRequest),
            (OpenAi, 500, "", ServerError),
            (OpenAi, 502, "<html>bad gateway</html>", ServerError),
            (OpenAi, 503, "", ServerError),
            (
                OpenAi,
                503,
                r#"{"error":{"message":"The server is overloaded or not ready yet.","type":"server_error"}}"#,
                Overloaded,
            ),
            (OpenAi, 504, "", ServerError),
            (OpenAi, 520, "", ServerError),
            (Anthropic, 529, "", Overloaded),
            (OpenAi, 302, "", InvalidResponse),
        ];
        for &(kind, status, body, want) in cases {
            let got = classify_status(kind, status, body.as_bytes());
            assert_eq!(got, want, "{kind:?} {status} {body}");
        }
    }

    #[test]
    fn retryable_statuses_classify_as_retryable() {
        // Every status ARCHITECTURE.md "Retries" names as retryable classifies to a retryable
        // type, and the rest of 4xx never does.
        for status in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(
                classify_status(ProviderKind::OpenAi, status, b"").is_retryable(),
                "{status}"
            );
        }
        for status in (400..500).filter(|s| ![408, 409, 429].contains(s)) {
            assert!(
                !classify_status(ProviderKind::Anthropic, status, b"").is_retryable(),
                "{status}"
            );
        }
    }

    #[test]
    fn request_hash_is_32_hex_of_sha256() {
        // sha256("") = e3b0c44298fc1c149afbf4c8996fb924 27ae41e4649b934ca495991b7852b855
        assert_eq!(request_hash(b""), "e3b0c44298fc1c149afbf4c8996fb924");
        assert_eq!(request_hash(b"abc"), "ba7816bf8f01cfea414140de5dae2223");
    }

    #[test]
    fn estimate_counts_prompt_and_reply_budget() {
        let params = RequestParams {
            max_tokens: Some(100),
            system: Some("abcd".repeat(10)),
            ..RequestParams::default()
        };
        let messages = [
            msg("user", json!("x".repeat(400))),
            msg("user", json!([{"type": "text", "text": "y".repeat(40)}])),
        ];
        // (40 + 400 + 40) / 4 = 120 prompt tokens, 3 + 3 * 4 framing, 100 reply.
        for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
            assert_eq!(estimate_tokens(kind, &messages, &params), 120 + 15 + 100);
        }
        let no_max = RequestParams::default();
        let anthropic = estimate_tokens(ProviderKind::Anthropic, &[], &no_max);
        assert_eq!(anthropic, 3 + DEFAULT_MAX_TOKENS);
        assert_eq!(estimate_tokens(ProviderKind::OpenAi, &[], &no_max), 3);
    }

    #[test]
    fn error_bodies_of_both_shapes() {
        let openai = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let fields = error_fields(openai).expect("openai error");
        assert_eq!(fields.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(fields.message, "Incorrect API key provided");
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            describe_error_body(anthropic),
            "overloaded_error: Overloaded"
        );
        assert_eq!(
            describe_error_body(br#"{"error":{"code":429,"message":"slow"}}"#),
            "429: slow"
        );
        assert_eq!(describe_error_body(br#"{"error":"plain"}"#), "plain");
        assert_eq!(describe_error_body(b""), "(empty body)");
        let html = format!("<html>{}</html>", "é".repeat(400));
        let short = describe_error_body(html.as_bytes());
        assert!(short.len() <= 304 && short.ends_with('…'));
    }

    #[test]
    fn dispatch_reaches_each_provider() {
        let openai = br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}"#;
        assert_eq!(
            parse_response(ProviderKind::OpenAi, openai).map(|c| c.text),
            Ok("hi".into())
        );
        let anthropic = br#"{"content":[{"type":"text","text":"yo"}],"stop_reason":"end_turn"}"#;
        assert_eq!(
            parse_response(ProviderKind::Anthropic, anthropic).map(|c| c.text),
            Ok("yo".into())
        );
        let mut acc = Accumulator::new(ProviderKind::OpenAi);
        assert_eq!(acc.on_event("message", "[DONE]"), Ok(StreamStep::Done));
        assert!(acc.finish().is_ok());
        let acc = Accumulator::new(ProviderKind::Anthropic);
        assert_eq!(
            acc.finish().map_err(|f| f.kind),
            Err(ErrorType::IncompleteStream)
        );
    }

    #[test]
    fn the_reasoning_family_rule() {
        for name in [
            "o1",
            "o1-mini",
            "o1-preview-2024-09-12",
            "o3",
            "o3-mini",
            "o3-pro",
            "o4-mini",
            "o4-mini-2025-04-16",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano-2025-08-07",
            "gpt-5-mini-2025-08-07",
            "gpt-5.1",
            "gpt-5.1-codex",
            "GPT-5-Mini",
            "openai/o3-mini",
            "azure/gpt-5",
        ] {
            assert!(is_reasoning_model(name), "{name}");
        }
        for name in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-50",
            "gpt-5x",
            "o",
            "omni",
            "o1x",
            "claude-opus-4",
            "mock",
            "",
            "gpt-5.",
        ] {
            assert!(!is_reasoning_model(name), "{name}");
        }
    }

    fn params_with(extra: serde_json::Value) -> RequestParams {
        RequestParams {
            model: "gpt-4o-mini".into(),
            temperature: Some(0.2),
            max_tokens: Some(64),
            extra: extra.as_object().cloned().map(Arc::new),
            ..RequestParams::default()
        }
    }

    fn body_of(
        kind: ProviderKind,
        params: &RequestParams,
        row: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let target = target(kind, "http://h/v1", &ApiKey::new("k"));
        let messages = Messages::from_json(r#"[{"role":"user","content":"hi"}]"#.into()).unwrap();
        let row = row.and_then(|r| r.as_object().cloned());
        let req = prepare_row(kind, &target, params, &messages, row.as_ref());
        let text = std::str::from_utf8(&req.body).unwrap();
        // Never a key twice: serde_json's Value keeps the last, so count the raw text.
        for key in ["\"model\"", "\"temperature\"", "\"max_tokens\"", "\"seed\""] {
            assert!(text.matches(key).count() <= 1, "{text}");
        }
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn params_merge_after_the_builder_and_win() {
        let params = params_with(json!({"seed": 7, "top_p": 0.9, "temperature": 0.7,
            "tools": [{"type": "function", "function": {"name": "f"}}]}));
        let body = body_of(ProviderKind::OpenAi, &params, None);
        assert_eq!(
            body,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 64, "stream": false, "seed": 7, "top_p": 0.9, "temperature": 0.7,
                "tools": [{"type": "function", "function": {"name": "f"}}]})
        );
        // A row's params override the run's, and may name the model.
        let row =
            json!({"seed": 8, "model": "gpt-4.1", "response_format": {"type": "json_object"}});
        let body = body_of(ProviderKind::OpenAi, &params, Some(row));
        assert_eq!(body["seed"], 8);
        assert_eq!(body["model"], "gpt-4.1");
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["response_format"]["type"], "json_object");
        // No params: the body is exactly what it always was.
        let plain = params_with(json!({}));
        assert!(plain.extra.is_some());
        let target = target(ProviderKind::OpenAi, "http://h/v1", &ApiKey::new("k"));
        let messages = Messages::from_json(r#"[{"role":"user","content":"hi"}]"#.into()).unwrap();
        let req = prepare_row(ProviderKind::OpenAi, &target, &plain, &messages, None);
        assert_eq!(
            std::str::from_utf8(&req.body).unwrap(),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":0.2,"max_tokens":64,"stream":false}"#
        );
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens_unless_params_say_otherwise() {
        let mut params = params_with(json!({}));
        params.model = "o4-mini".into();
        params.temperature = None;
        let body = body_of(ProviderKind::OpenAi, &params, None);
        assert_eq!(body["max_completion_tokens"], 64);
        assert!(body.get("max_tokens").is_none());
        // Azure speaks the same.
        let body = body_of(ProviderKind::Azure, &params, None);
        assert_eq!(body["max_completion_tokens"], 64);
        // The row's model decides (a Batch API line naming gpt-5-mini in a gpt-4o run).
        let body = body_of(
            ProviderKind::OpenAi,
            &params_with(json!({})),
            Some(json!({"model": "gpt-5-mini"})),
        );
        assert_eq!(
            (
                body["max_completion_tokens"].clone(),
                body.get("max_tokens")
            ),
            (json!(64), None)
        );
        // An explicit max_tokens or max_completion_tokens in params wins, whatever the model.
        for explicit in ["max_tokens", "max_completion_tokens"] {
            let body = body_of(ProviderKind::OpenAi, &params, Some(json!({explicit: 9})));
            assert_eq!(body[explicit], 9);
            let other = if explicit == "max_tokens" {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            assert!(body.get(other).is_none(), "{body}");
        }
        // The estimate charges the budget that is sent.
        let messages = Messages::from_json(r#"[{"role":"user","content":"hi"}]"#.into()).unwrap();
        let row = json!({"max_completion_tokens": 1000});
        let with = estimate_row_tokens(ProviderKind::OpenAi, &messages, &params, row.as_object());
        let without = estimate_row_tokens(ProviderKind::OpenAi, &messages, &params, None);
        assert_eq!(with - without, 1000 - 64);
    }

    #[test]
    fn anthropic_params_override_the_builders_fields() {
        let params = RequestParams {
            model: "claude-sonnet-4-5".into(),
            system: Some("Be brief.".into()),
            extra: json!({"thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 5,
                "stop_sequences": ["END"], "max_tokens": 2048})
            .as_object()
            .cloned()
            .map(Arc::new),
            ..RequestParams::default()
        };
        let body = body_of(ProviderKind::Anthropic, &params, None);
        assert_eq!(
            body,
            json!({"model": "claude-sonnet-4-5", "system": "Be brief.",
                "messages": [{"role": "user", "content": "hi"}], "stream": false,
                "thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 5,
                "stop_sequences": ["END"], "max_tokens": 2048})
        );
        let row = json!({"system": [{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}]});
        let body = body_of(ProviderKind::Anthropic, &params, Some(row));
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
    }

    #[test]
    fn a_row_payload_is_an_array_or_an_object_with_params() {
        let array = RowPayload::from_json(r#"[{"role":"user","content":"hi"}]"#.into()).unwrap();
        assert!(matches!(array.messages, Messages::Json(_)) && array.params.is_none());
        let object = RowPayload::from_json(
            r#"{"messages":[{"role":"user","content":"hi"}],"params":{"model":"o3","seed":1}}"#
                .into(),
        )
        .unwrap();
        assert!(matches!(object.messages, Messages::Json(_)));
        assert_eq!(object.params.unwrap()["model"], "o3");
        let empty = RowPayload::from_json(
            r#"{"messages":[{"role":"user","content":"x"}],"params":{}}"#.into(),
        )
        .unwrap();
        assert!(empty.params.is_none());
        for bad in [
            r#"{"messages":[{"role":"user","content":"x"}],"params":{"stream":true}}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"params":{"messages":[]}}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"extra":1}"#,
            r#"{"params":{}}"#,
            r#"{"messages":"x"}"#,
            "not json",
        ] {
            assert!(RowPayload::from_json(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn extra_headers_are_sent_after_the_providers_and_replace_them() {
        let key = ApiKey::new("sk-key");
        let headers = [
            ("anthropic-beta".to_string(), "output-128k".to_string()),
            ("anthropic-version".to_string(), "2099-01-01".to_string()),
        ];
        let mut endpoint = Endpoint::new(ProviderKind::Anthropic, "http://h", &key);
        endpoint.headers = &headers;
        let target = endpoint.target();
        let (_, sent) = target.http().unwrap();
        assert_eq!(sent["anthropic-beta"], "output-128k");
        assert_eq!(sent["anthropic-version"], "2099-01-01");
        assert_eq!(sent.get_all("anthropic-version").iter().count(), 1);
        assert_eq!(target.credentials().collect::<Vec<_>>(), ["sk-key"]);
    }
}
