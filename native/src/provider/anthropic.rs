//! Anthropic Messages wire format: request body, JSON response and streamed events.

use super::raw::RawMessages;
use super::Target;
use super::{
    describe_error_body, error_object, is_system_role, snippet, tool_call_json, truncate,
    Completion, Content, Extra, Message, OutMessage, Params, PreparedRequest, RequestParams,
    StreamFailure, StreamStep, Usage, DEFAULT_MAX_TOKENS,
};
use crate::error::ErrorType;
use crate::secret::ApiKey;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// The API version the request and event shapes below follow.
pub const API_VERSION: &str = "2023-06-01";

#[derive(Serialize)]
struct Body<'a, M> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
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
/// Params (the run's, then the row's: `row`) are merged in last and win (see [`Extra`]):
/// `thinking`, `top_k`, `stop_sequences`, `tools`, `output_config`, even `system`.
pub fn prepare(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &[Message],
    row: Option<&Params>,
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
    request(target, params, system, out, row)
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
    row: Option<&Params>,
) -> PreparedRequest {
    if messages.has_system {
        return prepare(target, params, &messages.parsed(), row);
    }
    let system = params.system.as_deref().map(Cow::Borrowed);
    request(target, params, system, messages.json(), row)
}

fn request<M: Serialize>(
    target: &Arc<Target>,
    params: &RequestParams,
    system: Option<Cow<'_, str>>,
    messages: M,
    row: Option<&Params>,
) -> PreparedRequest {
    let extra = Extra::new(params.extra.as_deref(), row);
    let body = Body {
        model: (!extra.has("model")).then_some(params.model.as_str()),
        max_tokens: (!extra.has("max_tokens"))
            .then(|| params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        system: system.filter(|_| !extra.has("system")),
        messages,
        temperature: params.temperature.filter(|_| !extra.has("temperature")),
        stream: params.stream,
    };
    // Serializing borrowed strings and JSON values cannot fail.
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    extra.write_into(&mut bytes);
    PreparedRequest {
        target: Arc::clone(target),
        body: bytes.into(),
    }
}

/// The text of a system message: a string, or the `text` of each of its parts.
fn content_text(content: &Value) -> Vec<Cow<'_, str>> {
    match content {
        Value::String(s) => vec![Cow::Borrowed(s.as_str())],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text")?.as_str())
            .map(Cow::Borrowed)
            .collect(),
        Value::Null => Vec::new(),
        other => vec![Cow::Owned(other.to_string())],
    }
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default, borrow)]
    content: Vec<Block<'a>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
}

/// A tool's input JSON as compact text (`{}` when there is none).
fn arguments_text(input: &str) -> String {
    match serde_json::from_str::<Value>(input) {
        Ok(value) => value.to_string(),
        Err(_) if input.trim().is_empty() => "{}".to_string(),
        Err(_) => input.to_string(),
    }
}

/// Applies Anthropic usage: the prompt is `input_tokens` plus the cache's reads and writes.
fn apply_usage(completion: &mut Completion, input: &mut Option<u64>, usage: Usage) {
    if usage.prompt_tokens.is_some() {
        *input = usage.prompt_tokens;
    }
    if usage.completion_tokens.is_some() {
        completion.completion_tokens = usage.completion_tokens;
    }
    if usage.cache_read_input_tokens.is_some() {
        completion.cached_prompt_tokens = usage.cache_read_input_tokens;
    }
    if usage.cache_creation_input_tokens.is_some() {
        completion.cache_write_tokens = usage.cache_creation_input_tokens;
    }
    let parts = [
        *input,
        completion.cached_prompt_tokens,
        completion.cache_write_tokens,
    ];
    if parts.iter().any(Option::is_some) {
        completion.prompt_tokens = Some(parts.iter().flatten().sum());
    }
}

/// A refused message (`stop_reason: "refusal"`, Anthropic's streaming classifiers declining
/// to go on) fills `refusal` with the text it carries, else with "refusal"; the finish reason
/// stays "refusal".
fn apply_refusal(completion: &mut Completion) {
    if completion.finish_reason.as_deref() == Some("refusal") {
        completion.refusal = Some(if completion.text.is_empty() {
            "refusal".to_string()
        } else {
            completion.text.clone()
        });
    }
}

/// Reads a non-streaming response: the concatenated text blocks, `tool_use` blocks as tool
/// calls, `stop_reason` (a refusal: [`apply_refusal`]) and usage.
pub fn parse_response(body: &[u8]) -> Result<Completion, String> {
    let response: Response<'_> = serde_json::from_slice(body)
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
    let calls: Vec<Value> = response
        .content
        .iter()
        .filter(|b| b.kind == "tool_use")
        .map(|b| {
            let arguments = arguments_text(b.input.map_or("", RawValue::get));
            tool_call_json(
                b.id.as_deref().unwrap_or_default(),
                b.name.as_deref().unwrap_or_default(),
                &arguments,
            )
        })
        .collect();
    let mut completion = Completion {
        text,
        finish_reason: response.stop_reason,
        tool_calls: (!calls.is_empty()).then(|| Value::Array(calls).to_string()),
        ..Completion::default()
    };
    apply_refusal(&mut completion);
    if let Some(usage) = response.usage {
        apply_usage(&mut completion, &mut None, usage);
    }
    Ok(completion)
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
    index: Option<u32>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default, borrow)]
    content_block: Option<EventBlock<'a>>,
    #[serde(default, borrow)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct EventBlock<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default)]
    stop_reason: Option<String>,
}

/// Blocks beyond this index are ignored, so that a stray index cannot grow memory.
const MAX_BLOCKS: u32 = 1024;

/// A content block being streamed: tool calls always, every block with `keep_raw`.
#[derive(Debug, Default)]
struct BlockParts {
    index: u32,
    kind: String,
    /// Text (a text block), thinking (a thinking block) or input JSON (a tool_use block).
    body: String,
    id: String,
    name: String,
}

/// Assembles a streamed message: `message_start`, `content_block_*`, `message_delta`,
/// `message_stop`; `ping` and unknown events are skipped, `error` fails the stream.
#[derive(Debug, Default)]
pub struct StreamAccumulator {
    completion: Completion,
    done: bool,
    keep_raw: bool,
    /// `input_tokens` as last reported (the part of the prompt the cache did not serve).
    input_tokens: Option<u64>,
    blocks: Vec<BlockParts>,
    id: Option<String>,
    model: Option<String>,
}

impl StreamAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// One that also assembles the whole message as JSON ([`Completion::raw`]).
    pub fn keeping_raw(keep_raw: bool) -> Self {
        Self {
            keep_raw,
            ..Self::default()
        }
    }

    fn block(&mut self, index: Option<u32>) -> Option<&mut BlockParts> {
        let index = index?;
        self.blocks.iter_mut().find(|b| b.index == index)
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
                if let Some(message) = parsed.message {
                    if let Some(usage) = message.usage {
                        apply_usage(&mut self.completion, &mut self.input_tokens, usage);
                    }
                    self.id = message.id;
                    self.model = message.model;
                }
                Ok(StreamStep::Continue)
            }
            "content_block_start" => {
                let Some(block) = parsed.content_block else {
                    return Ok(StreamStep::Continue);
                };
                let kind = block.kind.as_deref().unwrap_or_default();
                let index = parsed.index.unwrap_or(self.blocks.len() as u32);
                if (self.keep_raw || kind == "tool_use") && index <= MAX_BLOCKS {
                    self.blocks.push(BlockParts {
                        index,
                        kind: kind.to_string(),
                        body: match (kind, &block.text) {
                            ("text", Some(text)) if self.keep_raw => text.to_string(),
                            _ => String::new(),
                        },
                        id: block.id.unwrap_or_default(),
                        name: block.name.unwrap_or_default(),
                    });
                }
                let text = block.text.filter(|_| kind == "text");
                Ok(self.append(text))
            }
            "content_block_delta" => {
                let Some(delta) = parsed.delta else {
                    return Ok(StreamStep::Continue);
                };
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if self.keep_raw {
                            if let (Some(block), Some(text)) =
                                (self.block(parsed.index), &delta.text)
                            {
                                block.body.push_str(text);
                            }
                        }
                        Ok(self.append(delta.text))
                    }
                    Some("input_json_delta") => {
                        if let (Some(block), Some(json)) =
                            (self.block(parsed.index), delta.partial_json)
                        {
                            block.body.push_str(&json);
                        }
                        Ok(StreamStep::Continue)
                    }
                    Some("thinking_delta") => {
                        if let (Some(block), Some(thinking)) =
                            (self.block(parsed.index), delta.thinking)
                        {
                            block.body.push_str(&thinking);
                        }
                        Ok(StreamStep::Continue)
                    }
                    _ => Ok(StreamStep::Continue),
                }
            }
            "message_delta" => {
                if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                    self.completion.finish_reason = Some(reason);
                }
                if let Some(usage) = parsed.usage {
                    apply_usage(&mut self.completion, &mut self.input_tokens, usage);
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

    /// The text assembled so far.
    pub fn text(&self) -> &str {
        &self.completion.text
    }

    /// The completion, or `IncompleteStream` when `message_stop` never came.
    pub fn finish(mut self) -> Result<Completion, StreamFailure> {
        if !self.done {
            return Err(StreamFailure::new(
                ErrorType::IncompleteStream,
                format!(
                    "stream ended before message_stop after {} bytes of text",
                    self.completion.text.len()
                ),
            ));
        }
        self.blocks.sort_by_key(|b| b.index);
        let calls: Vec<Value> = self
            .blocks
            .iter()
            .filter(|b| b.kind == "tool_use")
            .map(|b| tool_call_json(&b.id, &b.name, &arguments_text(&b.body)))
            .collect();
        if !calls.is_empty() {
            self.completion.tool_calls = Some(Value::Array(calls).to_string());
        }
        apply_refusal(&mut self.completion);
        if self.keep_raw {
            self.completion.raw = Some(self.raw_json().to_string());
        }
        Ok(self.completion)
    }

    /// The assembled `message` object: its blocks in order, stop reason and usage.
    fn raw_json(&self) -> Value {
        let content: Vec<Value> = self
            .blocks
            .iter()
            .map(|b| match b.kind.as_str() {
                "text" => json!({"type": "text", "text": b.body}),
                "thinking" => json!({"type": "thinking", "thinking": b.body}),
                "tool_use" => {
                    let input: Value =
                        serde_json::from_str(&arguments_text(&b.body)).unwrap_or(json!({}));
                    json!({"type": "tool_use", "id": b.id, "name": b.name, "input": input})
                }
                other => json!({"type": other}),
            })
            .collect();
        let c = &self.completion;
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": c.finish_reason,
            "usage": {
                "input_tokens": self.input_tokens,
                "cache_read_input_tokens": c.cached_prompt_tokens,
                "cache_creation_input_tokens": c.cache_write_tokens,
                "output_tokens": c.completion_tokens,
            },
        })
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
            extra: None,
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
                tool_calls: Some(
                    r#"[{"function":{"arguments":"{}","name":"f"},"id":"t","type":"function"}]"#
                        .into()
                ),
                ..Completion::default()
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
                ..Completion::default()
            })
        );
    }

    #[test]
    fn a_refusal_fills_the_refusal_column_plain_and_streamed() {
        let refused = br#"{"type":"message","role":"assistant","content":[{"type":"text","text":"Hello.."}],"stop_reason":"refusal","stop_details":{"type":"refusal","category":"cyber"},"usage":{"input_tokens":3,"output_tokens":2}}"#;
        let c = parse_response(refused).expect("refusal is an answer");
        assert_eq!(c.refusal.as_deref(), Some("Hello.."));
        assert_eq!(c.finish_reason.as_deref(), Some("refusal"));
        assert_eq!(c.text, "Hello..");
        let empty = br#"{"type":"message","content":[],"stop_reason":"refusal"}"#;
        let c = parse_response(empty).expect("refusal is an answer");
        assert_eq!(c.refusal.as_deref(), Some("refusal"));
        assert_eq!(c.finish_reason.as_deref(), Some("refusal"));
        let ended = br#"{"type":"message","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn"}"#;
        assert_eq!(parse_response(ended).expect("answer").refusal, None);

        let mut acc = StreamAccumulator::new();
        for (event, data) in &STREAM[..6] {
            assert!(acc.on_event(event, data).is_ok());
        }
        let refusal_delta = r#"{"type":"message_delta","delta":{"stop_reason":"refusal","stop_sequence":null,"stop_details":{"type":"refusal"}},"usage":{"output_tokens":2}}"#;
        assert!(acc.on_event("message_delta", refusal_delta).is_ok());
        assert!(acc
            .on_event("message_stop", r#"{"type":"message_stop"}"#)
            .is_ok());
        let c = acc.finish().expect("refused stream");
        assert_eq!(c.refusal.as_deref(), Some("Hello!\n"));
        assert_eq!(c.finish_reason.as_deref(), Some("refusal"));
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
