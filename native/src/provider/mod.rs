//! Provider wire formats: building requests and reading responses for OpenAI and Anthropic.
//!
//! CONTRACT (used by transport.rs and executor.rs; keep these names and signatures):
//! `prepare`, `parse_response`, `error_message`, `Accumulator`, `StreamStep`, `StreamFailure`,
//! `estimate_tokens`, `request_hash`, `classify_status`; for a row's [`Messages`]: `prepare_row`,
//! `estimate_row_tokens`.

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

/// Which wire format a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
}

impl ProviderKind {
    /// The provider's name as users write it (`openai`, `anthropic`), e.g. in log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
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
    pub headers: Vec<(&'static str, String)>,
    /// `url` parsed and `headers` validated, as the HTTP client takes them; made on first use.
    http: OnceLock<Result<(reqwest::Url, HeaderMap), String>>,
}

impl Target {
    pub fn new(url: String, headers: Vec<(&'static str, String)>) -> Self {
        Self {
            url,
            headers,
            http: OnceLock::new(),
        }
    }

    /// The URL and headers for reqwest, or why they are unusable (never a header's value).
    pub fn http(&self) -> Result<&(reqwest::Url, HeaderMap), &str> {
        self.http
            .get_or_init(|| {
                let url = reqwest::Url::parse(&self.url)
                    .map_err(|e| format!("invalid URL {}: {e}", self.url))?;
                let mut headers = HeaderMap::with_capacity(self.headers.len());
                for (name, value) in &self.headers {
                    let value = HeaderValue::from_str(value)
                        .map_err(|_| format!("invalid value for header {name}"))?;
                    headers.insert(HeaderName::from_static(name), value);
                }
                Ok((url, headers))
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

/// The [`Target`] of a run's requests.
pub fn target(kind: ProviderKind, base: &str, key: &ApiKey) -> Arc<Target> {
    Arc::new(match kind {
        ProviderKind::OpenAi => openai::target(base, key),
        ProviderKind::Anthropic => anthropic::target(base, key),
    })
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
    prepare_parsed(kind, &target(kind, base, key), params, messages)
}

fn prepare_parsed(
    kind: ProviderKind,
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &[Message],
) -> PreparedRequest {
    match kind {
        ProviderKind::OpenAi => openai::prepare(target, params, messages),
        ProviderKind::Anthropic => anthropic::prepare(target, params, messages),
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

/// [`prepare`] for a row's [`Messages`]; text messages go into the body as they are.
pub fn prepare_row(
    kind: ProviderKind,
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &Messages,
) -> PreparedRequest {
    match (messages, kind) {
        (Messages::Parsed(messages), _) => prepare_parsed(kind, target, params, messages),
        (Messages::Json(raw), ProviderKind::OpenAi) => openai::prepare_raw(target, params, raw),
        (Messages::Json(raw), ProviderKind::Anthropic) => {
            anthropic::prepare_raw(target, params, raw)
        }
    }
}

/// [`estimate_tokens`] for a row's [`Messages`].
pub fn estimate_row_tokens(kind: ProviderKind, messages: &Messages, params: &RequestParams) -> u32 {
    match messages {
        Messages::Parsed(messages) => estimate_tokens(kind, messages, params),
        Messages::Json(raw) => estimate(kind, raw.chars, raw.count, params),
    }
}

/// Reads a non-streaming 2xx body into a [`Completion`]; `Err` explains what was wrong with it.
pub fn parse_response(kind: ProviderKind, body: &[u8]) -> Result<Completion, String> {
    match kind {
        ProviderKind::OpenAi => openai::parse_response(body),
        ProviderKind::Anthropic => anthropic::parse_response(body),
    }
}

/// The provider's own message from an error body, else the body itself, shortened.
pub fn error_message(kind: ProviderKind, body: &[u8]) -> String {
    match kind {
        ProviderKind::OpenAi => openai::error_message(body),
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
        ProviderKind::OpenAi => (openai::QUOTA_NAMES, openai::QUOTA_PHRASES),
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
        match kind {
            ProviderKind::OpenAi => Accumulator::OpenAi(openai::StreamAccumulator::new()),
            ProviderKind::Anthropic => Accumulator::Anthropic(anthropic::StreamAccumulator::new()),
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
    estimate(kind, chars, messages.len() as u64, params)
}

/// The estimate for `count` messages holding `chars` characters of text.
fn estimate(kind: ProviderKind, chars: u64, count: u64, params: &RequestParams) -> u32 {
    const PER_MESSAGE: u64 = 4;
    const PER_REQUEST: u64 = 3;
    let system = params.system.as_deref();
    let chars = chars + system.map_or(0, |s| s.chars().count() as u64);
    let framing = PER_REQUEST + PER_MESSAGE * (count + u64::from(system.is_some()));
    // OpenAI counts max_tokens only when it is sent; Anthropic always sends one (its default).
    let reply = match (kind, params.max_tokens) {
        (_, Some(n)) => u64::from(n),
        (ProviderKind::Anthropic, None) => u64::from(DEFAULT_MAX_TOKENS),
        (ProviderKind::OpenAi, None) => 0,
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
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: Option<u64>,
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
}
