//! Anthropic Messages wire format: request body, JSON response and streamed events.

use super::raw::RawMessages;
use super::Target;
use super::{
    describe_error_body, error_object, is_system_role, snippet, truncate, Completion, Content,
    Message, OutMessage, PreparedRequest, RequestParams, StreamFailure, StreamStep, Usage,
    DEFAULT_MAX_TOKENS,
};
use crate::error::ErrorType;
use crate::secret::ApiKey;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// The API version the request and event shapes below follow.
pub const API_VERSION: &str = "2023-06-01";

#[derive(Serialize)]
struct Body<'a, M> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Cow<'a, str>>,
    messages: M,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    stream: bool,
}

/// `POST {base}/v1/messages` (the base has no `/v1`, as in the official SDK). The run's system
/// prompt and any `system`/`developer` messages are joined (blank line between) into the
/// top-level `system`; `max_tokens`, required by the API, defaults to [`DEFAULT_MAX_TOKENS`].
/// Other messages and their content (string or content blocks) are passed through as given.
pub fn prepare(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &[Message],
) -> PreparedRequest {
    let mut system_parts: Vec<Cow<'_, str>> = Vec::new();
    if let Some(system) = params.system.as_deref() {
        system_parts.push(Cow::Borrowed(system));
    }
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        if is_system_role(&message.role) {
            system_parts.extend(content_text(&message.content));
        } else {
            out.push(OutMessage {
                role: &message.role,
                content: Content::Json(&message.content),
            });
        }
    }
    let system = match system_parts.len() {
        0 => None,
        // The common case (one system prompt) stays borrowed.
        1 => system_parts.pop(),
        _ => Some(Cow::Owned(system_parts.join("\n\n"))),
    };
    request(target, params, system, out)
}

/// `{base}/v1/messages` with `x-api-key` and `anthropic-version`.
pub fn target(base: &str, key: &ApiKey) -> Target {
    Target::new(
        format!("{}/v1/messages", base.trim_end_matches('/')),
        vec![
            ("x-api-key", key.expose().to_string()),
            ("anthropic-version", API_VERSION.to_string()),
            ("content-type", "application/json".to_string()),
        ],
    )
}

/// [`prepare`] for messages kept as JSON text: written into the body as they are, unless a
/// system message among them has to move to the top-level `system`.
pub fn prepare_raw(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &RawMessages,
) -> PreparedRequest {
    if messages.has_system {
        return prepare(target, params, &messages.parsed());
    }
    let system = params.system.as_deref().map(Cow::Borrowed);
    request(target, params, system, messages.json())
}

fn request<M: Serialize>(
    target: &Arc<Target>,
    params: &RequestParams,
    system: Option<Cow<'_, str>>,
    messages: M,
) -> PreparedRequest {
    let body = Body {
        model: &params.model,
        max_tokens: params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages,
        temperature: params.temperature,
        stream: params.stream,
    };
    PreparedRequest {
        target: Arc::clone(target),
        // Serializing borrowed strings and JSON values cannot fail.
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
    }
}

/// The text of a system message: a string, or the `text` of each of its parts.
fn content_text(content: &serde_json::Value) -> Vec<Cow<'_, str>> {
    match content {
        serde_json::Value::String(s) => vec![Cow::Borrowed(s.as_str())],
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text")?.as_str())
            .map(Cow::Borrowed)
            .collect(),
        serde_json::Value::Null => Vec::new(),
        other => vec![Cow::Owned(other.to_string())],
    }
}

#[derive(Deserialize)]
struct Response {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// Reads a non-streaming response: the concatenated text blocks, `stop_reason` and usage.
pub fn parse_response(body: &[u8]) -> Result<Completion, String> {
    let response: Response = serde_json::from_slice(body)
        .map_err(|e| format!("response is not Messages JSON ({e}): {}", snippet(body)))?;
    if response.kind.as_deref() == Some("error") || response.error.is_some() {
        let message = response
            .error
            .as_ref()
            .and_then(error_object)
            .map(|e| e.message)
            .unwrap_or_default();
        return Err(format!("error in a 2xx response: {message}"));
    }
    if response.kind.as_deref().is_some_and(|k| k != "message") {
        return Err(format!("unexpected response type: {}", snippet(body)));
    }
    let text: String = response
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect();
    let usage = response.usage.unwrap_or_default();
    Ok(Completion {
        text,
        finish_reason: response.stop_reason,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
    })
}

/// The message of `{"type":"error","error":{"type","message"}}`, else the body, shortened.
pub fn error_message(body: &[u8]) -> String {
    describe_error_body(body)
}

/// Error `type`s or `code`s that mean the account is out of credit (see `classify_status`).
pub(crate) const QUOTA_NAMES: &[&str] = &["billing_error"];
/// ... and phrases of their messages that say so (lowercase).
pub(crate) const QUOTA_PHRASES: &[&str] = &["credit balance is too low"];

/// One streamed event's data. A flat struct (rather than an enum tagged by `type`) lets text
/// deltas borrow from the event instead of being copied through serde's buffering.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default, borrow)]
    content_block: Option<EventBlock<'a>>,
    #[serde(default, borrow)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct EventBlock<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    stop_reason: Option<String>,
}

/// Assembles a streamed message: `message_start`, `content_block_*`, `message_delta`,
/// `message_stop`; `ping` and unknown events are skipped, `error` fails the stream.
#[derive(Debug, Default)]
pub struct StreamAccumulator {
    completion: Completion,
    done: bool,
}

impl StreamAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one event. The SSE event name decides; the data's `type` stands in when the
    /// event line was missing (the event name is then `message`).
    pub fn on_event(&mut self, event: &str, data: &str) -> Result<StreamStep, StreamFailure> {
        if self.done {
            return Ok(StreamStep::Done);
        }
        if event == "ping" {
            return Ok(StreamStep::Continue);
        }
        let parsed: Event<'_> = serde_json::from_str(data).map_err(|e| {
            StreamFailure::new(
                ErrorType::InvalidResponse,
                format!("malformed {event} event ({e}): {}", truncate(data, 200)),
            )
        })?;
        let name = match (event, parsed.kind.as_deref()) {
            ("" | "message", Some(kind)) => kind,
            _ => event,
        };
        match name {
            "message_start" => {
                if let Some(usage) = parsed.message.and_then(|m| m.usage) {
                    self.apply_usage(usage);
                }
                Ok(StreamStep::Continue)
            }
            "content_block_start" => {
                let text = parsed
                    .content_block
                    .filter(|b| b.kind.as_deref() == Some("text"))
                    .and_then(|b| b.text);
                Ok(self.append(text))
            }
            "content_block_delta" => {
                let text = parsed
                    .delta
                    .filter(|d| d.kind.as_deref() == Some("text_delta"))
                    .and_then(|d| d.text);
                Ok(self.append(text))
            }
            "message_delta" => {
                if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                    self.completion.finish_reason = Some(reason);
                }
                if let Some(usage) = parsed.usage {
                    self.apply_usage(usage);
                }
                Ok(StreamStep::Continue)
            }
            "message_stop" => {
                self.done = true;
                Ok(StreamStep::Done)
            }
            "error" => {
                let error = parsed
                    .error
                    .as_ref()
                    .and_then(error_object)
                    .unwrap_or_default();
                let kind = error
                    .kind
                    .as_deref()
                    .and_then(ErrorType::from_provider_name)
                    // An error the server reports mid-stream is on its side: worth another try.
                    .unwrap_or(ErrorType::ServerError);
                let label = error.kind.as_deref().unwrap_or("error");
                Err(StreamFailure::new(
                    kind,
                    format!("error event: {label}: {}", error.message),
                ))
            }
            // ping, content_block_stop, and event types added after this was written.
            _ => Ok(StreamStep::Continue),
        }
    }

    fn append(&mut self, text: Option<Cow<'_, str>>) -> StreamStep {
        match text {
            Some(text) if !text.is_empty() => {
                self.completion.text.push_str(&text);
                StreamStep::Delta(text.len())
            }
            _ => StreamStep::Continue,
        }
    }

    /// Counts arrive in pieces (input at the start, output cumulatively at the end), so only
    /// the ones present overwrite what we have.
    fn apply_usage(&mut self, usage: Usage) {
        if usage.prompt_tokens.is_some() {
            self.completion.prompt_tokens = usage.prompt_tokens;
        }
        if usage.completion_tokens.is_some() {
            self.completion.completion_tokens = usage.completion_tokens;
        }
    }

    /// The text assembled so far.
    pub fn text(&self) -> &str {
        &self.completion.text
    }

    /// The completion, or `IncompleteStream` when `message_stop` never came.
    pub fn finish(self) -> Result<Completion, StreamFailure> {
        if self.done {
            Ok(self.completion)
        } else {
            Err(StreamFailure::new(
                ErrorType::IncompleteStream,
                format!(
                    "stream ended before message_stop after {} bytes of text",
                    self.completion.text.len()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn message(role: &str, content: Value) -> Message {
        Message {
            role: role.into(),
            content,
        }
    }

    #[test]
    fn prepare_builds_the_sdk_request() {
        let params = RequestParams {
            model: "claude-3-5-haiku-latest".into(),
            temperature: Some(0.5),
            max_tokens: None,
            stream: true,
            system: Some("Be brief.".into()),
        };
        let messages = [
            message("system", json!("Answer in French.")),
            message("developer", json!([{"type": "text", "text": "No lists."}])),
            message("user", json!("hi")),
            message("assistant", json!("salut")),
            message("user", json!([{"type": "text", "text": "again"}])),
        ];
        let req = crate::provider::prepare(
            crate::provider::ProviderKind::Anthropic,
            "https://api.anthropic.com/",
            &ApiKey::new("sk-ant-x"),
            &params,
            &messages,
        );
        assert_eq!(req.target.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(
            req.target.headers,
            vec![
                ("x-api-key", "sk-ant-x".to_string()),
                ("anthropic-version", "2023-06-01".to_string()),
                ("content-type", "application/json".to_string()),
            ]
        );
        let body: Value = serde_json::from_slice(&req.body).expect("json body");
        assert_eq!(
            body,
            json!({
                "model": "claude-3-5-haiku-latest",
                "max_tokens": 4096,
                "system": "Be brief.\n\nAnswer in French.\n\nNo lists.",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "salut"},
                    {"role": "user", "content": [{"type": "text", "text": "again"}]}
                ],
                "temperature": 0.5,
                "stream": true
            })
        );
    }

    #[test]
    fn prepare_omits_absent_system_and_temperature() {
        let params = RequestParams {
            model: "m".into(),
            max_tokens: Some(10),
            ..RequestParams::default()
        };
        let req = crate::provider::prepare(
            crate::provider::ProviderKind::Anthropic,
            "http://h",
            &ApiKey::new("k"),
            &params,
            &[message("user", json!("q"))],
        );
        let body: Value = serde_json::from_slice(&req.body).expect("json body");
        assert_eq!(
            body,
            json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "q"}], "stream": false})
        );
    }

    #[test]
    fn parse_response_reads_text_reason_and_usage() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"Bon"},{"type":"tool_use","id":"t","name":"f","input":{}},{"type":"text","text":"jour"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":2}}"#;
        assert_eq!(
            parse_response(body),
            Ok(Completion {
                text: "Bonjour".into(),
                finish_reason: Some("end_turn".into()),
                prompt_tokens: Some(10),
                completion_tokens: Some(2),
            })
        );
        let error = br#"{"type":"error","error":{"type":"api_error","message":"Internal"}}"#;
        assert!(parse_response(error).is_err_and(|e| e.contains("Internal")));
        assert!(parse_response(b"<html>").is_err());
    }

    #[test]
    fn error_message_prefers_the_provider_message() {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        assert_eq!(
            error_message(body),
            "invalid_request_error: max_tokens: Field required"
        );
        let long = "x".repeat(1000);
        assert!(error_message(long.as_bytes()).len() < 310);
    }

    /// The sequence from Anthropic's streaming documentation.
    const STREAM: &[(&str, &str)] = &[
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!\n"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];

    #[test]
    fn stream_assembles_the_documented_sequence() {
        let mut acc = StreamAccumulator::new();
        let steps: Vec<_> = STREAM
            .iter()
            .map(|(event, data)| acc.on_event(event, data))
            .collect();
        use StreamStep::*;
        assert_eq!(
            steps,
            vec![
                Ok(Continue),
                Ok(Continue),
                Ok(Continue),
                Ok(Delta(5)),
                Ok(Delta(2)),
                Ok(Continue),
                Ok(Continue),
                Ok(Done)
            ]
        );
        assert_eq!(
            acc.finish(),
            Ok(Completion {
                text: "Hello!\n".into(),
                finish_reason: Some("end_turn".into()),
                prompt_tokens: Some(25),
                completion_tokens: Some(15),
            })
        );
    }

    #[test]
    fn stream_without_event_names_uses_the_data_type() {
        let mut acc = StreamAccumulator::new();
        for (_, data) in STREAM {
            let _ = acc.on_event("message", data);
        }
        assert_eq!(acc.finish().map(|c| c.text), Ok("Hello!\n".into()));
    }

    #[test]
    fn stream_failures() {
        let cases = [
            ("overloaded_error", ErrorType::Overloaded),
            ("rate_limit_error", ErrorType::RateLimited),
            ("api_error", ErrorType::ServerError),
            ("brand_new_error", ErrorType::ServerError),
        ];
        for (name, want) in cases {
            let mut acc = StreamAccumulator::new();
            let data =
                format!(r#"{{"type":"error","error":{{"type":"{name}","message":"Overloaded"}}}}"#);
            let err = acc.on_event("error", &data).expect_err(name);
            assert_eq!(err.kind, want, "{name}");
            assert!(err.message.contains("Overloaded"));
        }
        let mut acc = StreamAccumulator::new();
        for (event, data) in &STREAM[..5] {
            assert!(acc.on_event(event, data).is_ok());
        }
        let failure = acc.finish().expect_err("cut stream");
        assert_eq!(failure.kind, ErrorType::IncompleteStream);
        let mut acc = StreamAccumulator::new();
        assert_eq!(
            acc.on_event("content_block_delta", "{oops")
                .map_err(|f| f.kind),
            Err(ErrorType::InvalidResponse)
        );
    }
}
