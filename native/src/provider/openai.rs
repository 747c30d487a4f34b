//! OpenAI Chat Completions wire format: request body, JSON response and streamed chunks.
//! Azure OpenAI speaks it too, at its deployment URL with an `api-key` header.

use super::raw::RawMessages;
use super::Target;
use super::{
    describe_error_body, error_object, is_reasoning_model, snippet, tool_call_json, truncate,
    Completion, Content, Extra, Message, OutMessage, Params, PreparedRequest, RequestParams,
    StreamFailure, StreamStep, Usage,
};
use crate::error::ErrorType;
use crate::secret::ApiKey;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Serialize)]
struct Body<'a, M> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: M,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// `POST {base}/chat/completions` (the base includes `/v1`, as in the official SDK), with the
/// run's system prompt prepended as a `system` message and `stream_options.include_usage` set
/// when streaming so the last chunk carries token counts. The run's max tokens go out as
/// `max_completion_tokens` for a reasoning model ([`is_reasoning_model`]), else `max_tokens`;
/// params (the run's, then the row's: `row`) are merged in last and win (see [`Extra`]).
pub fn prepare(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &[Message],
    row: Option<&Params>,
) -> PreparedRequest {
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = params.system.as_deref() {
        out.push(OutMessage {
            role: "system",
            content: Content::Text(system),
        });
    }
    out.extend(messages.iter().map(|m| OutMessage {
        role: &m.role,
        content: Content::Json(&m.content),
    }));
    request(target, params, out, row)
}

/// `{base}/chat/completions` with `Authorization: Bearer`.
pub fn target(base: &str, key: &ApiKey) -> Target {
    Target::new(
        format!("{}/chat/completions", base.trim_end_matches('/')),
        vec![
            ("authorization", format!("Bearer {}", key.expose())),
            ("content-type", "application/json".to_string()),
        ],
    )
}

/// Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=V`
/// with the `api-key` header (as the official SDK's `AzureOpenAI` client sends them). The
/// deployment is percent-encoded as one path segment ([`path_segment`]). Without a
/// deployment, `endpoint` is taken as the deployment's URL already.
pub fn azure_target(
    endpoint: &str,
    deployment: Option<&str>,
    api_version: Option<&str>,
    key: &ApiKey,
) -> Target {
    let endpoint = endpoint.trim_end_matches('/');
    let mut url = match deployment {
        Some(deployment) => format!(
            "{endpoint}/openai/deployments/{}/chat/completions",
            path_segment(deployment)
        ),
        None => format!("{endpoint}/chat/completions"),
    };
    if let Some(version) = api_version {
        url.push_str("?api-version=");
        url.push_str(version);
    }
    Target::new(
        url,
        vec![
            ("api-key", key.expose().to_string()),
            ("content-type", "application/json".to_string()),
        ],
    )
}

/// `segment` percent-encoded as one URL path segment: every byte of its UTF-8 but the
/// unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so `/`, `?`, `#`,
/// `%` and spaces in a deployment name cannot change the URL's shape.
pub(crate) fn path_segment(segment: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if segment.bytes().all(plain) {
        return Cow::Borrowed(segment);
    }
    let mut out = String::with_capacity(segment.len() * 3);
    for b in segment.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// [`prepare`] for messages kept as JSON text: written into the body as they are.
pub fn prepare_raw(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &RawMessages,
    row: Option<&Params>,
) -> PreparedRequest {
    match params.system.as_deref() {
        None => request(target, params, messages.json(), row),
        Some(system) => match messages.with_system(system) {
            Some(with_system) => request(target, params, &*with_system, row),
            None => prepare(target, params, &messages.parsed(), row),
        },
    }
}

/// Which field carries the run's max tokens: none when params set one explicitly (theirs is
/// sent), `max_completion_tokens` for a reasoning model, else `max_tokens`.
fn max_tokens_fields(
    max_tokens: Option<u32>,
    model: &str,
    extra: &Extra<'_>,
) -> (Option<u32>, Option<u32>) {
    match max_tokens {
        None => (None, None),
        Some(_) if extra.has("max_tokens") || extra.has("max_completion_tokens") => (None, None),
        Some(n) if is_reasoning_model(model) => (None, Some(n)),
        Some(n) => (Some(n), None),
    }
}

fn request<M: Serialize>(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: M,
    row: Option<&Params>,
) -> PreparedRequest {
    let extra = Extra::new(params.extra.as_deref(), row);
    let model = extra.model().unwrap_or(&params.model);
    let (max_tokens, max_completion_tokens) = max_tokens_fields(params.max_tokens, model, &extra);
    let body = Body {
        model: (!extra.has("model")).then_some(params.model.as_str()),
        messages,
        temperature: params.temperature.filter(|_| !extra.has("temperature")),
        max_tokens,
        max_completion_tokens,
        stream: params.stream,
        stream_options: (params.stream && !extra.has("stream_options")).then_some(StreamOptions {
            include_usage: true,
        }),
    };
    // Serializing borrowed strings and JSON values cannot fail.
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    extra.write_into(&mut bytes);
    PreparedRequest {
        target: Arc::clone(target),
        body: bytes.into(),
    }
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    message: Option<ResponseMessage<'a>>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default, borrow)]
    logprobs: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseMessage<'a> {
    #[serde(default)]
    content: Option<String>,
    /// Set instead of `content` when the model declines.
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
}

/// Applies OpenAI usage (with its details) to `completion`.
fn apply_usage(completion: &mut Completion, usage: Usage) {
    completion.prompt_tokens = usage.prompt_tokens;
    completion.completion_tokens = usage.completion_tokens;
    completion.cached_prompt_tokens = usage.prompt_tokens_details.and_then(|d| d.cached_tokens);
    completion.reasoning_tokens = usage
        .completion_tokens_details
        .and_then(|d| d.reasoning_tokens);
}

/// A `logprobs` value worth keeping: a JSON object or array, not `null`.
fn logprobs_text(raw: Option<&RawValue>) -> Option<String> {
    raw.map(RawValue::get)
        .map(str::trim)
        .filter(|text| text.starts_with('{') || text.starts_with('['))
        .map(str::to_string)
}

/// Reads a non-streaming response: the first choice's text, refusal, tool calls, finish
/// reason and logprobs, plus usage. With `n > 1` the first choice is the one with index 0,
/// and every choice's text goes into [`Completion::choices`], in index order.
pub fn parse_response(body: &[u8]) -> Result<Completion, String> {
    let response: Response<'_> = serde_json::from_slice(body).map_err(|e| {
        format!(
            "response is not chat completion JSON ({e}): {}",
            snippet(body)
        )
    })?;
    if let Some(error) = response.error.as_ref().and_then(error_object) {
        return Err(format!("error in a 2xx response: {}", error.message));
    }
    let mut choices = response.choices;
    let first = choices.iter().position(|c| c.index == 0).unwrap_or(0);
    if choices.is_empty() {
        return Err(format!("response has no choices: {}", snippet(body)));
    }
    let all = (choices.len() > 1).then(|| {
        let mut texts: Vec<(u32, String)> = choices
            .iter()
            .map(|c| {
                let message = c.message.as_ref();
                let text = message
                    .and_then(|m| m.content.clone().or_else(|| m.refusal.clone()))
                    .unwrap_or_default();
                (c.index, text)
            })
            .collect();
        texts.sort_by_key(|(index, _)| *index);
        texts.into_iter().map(|(_, text)| text).collect::<Vec<_>>()
    });
    let choice = choices.swap_remove(first);
    let logprobs = logprobs_text(choice.logprobs);
    let message = choice.message.unwrap_or(ResponseMessage {
        content: None,
        refusal: None,
        tool_calls: None,
    });
    let tool_calls = message
        .tool_calls
        .map(RawValue::get)
        .filter(|calls| !matches!(calls.trim(), "null" | "[]"))
        .map(str::to_string);
    let mut completion = Completion {
        text: message
            .content
            .or_else(|| message.refusal.clone())
            .unwrap_or_default(),
        finish_reason: choice.finish_reason,
        refusal: message.refusal,
        tool_calls,
        choices: all,
        logprobs,
        ..Completion::default()
    };
    if let Some(usage) = response.usage {
        apply_usage(&mut completion, usage);
    }
    Ok(completion)
}

/// The message of `{"error": {"message", "type", "code"}}`, else the body, shortened.
pub fn error_message(body: &[u8]) -> String {
    describe_error_body(body)
}

/// Error `type`s or `code`s that mean the account is out of credit (see `classify_status`).
pub(crate) const QUOTA_NAMES: &[&str] = &["insufficient_quota"];
/// ... and phrases of their messages that say so (lowercase).
pub(crate) const QUOTA_PHRASES: &[&str] = &["exceeded your current quota", "insufficient_quota"];

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    finish_reason: Option<String>,
    /// This chunk's share of the choice's logprobs (`null` when not asked for).
    #[serde(default)]
    logprobs: Option<LogprobsDelta>,
}

/// A streamed choice's `logprobs`: the entries of this chunk's tokens.
#[derive(Deserialize)]
struct LogprobsDelta {
    #[serde(default)]
    content: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    refusal: Option<Vec<Box<RawValue>>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    // Borrowed when the JSON string has no escapes: most deltas are a few plain words.
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// Choices (and tool calls) beyond this index are ignored: `n` is at most 128 at OpenAI, and a
/// stray index must not grow memory.
const MAX_INDEX: u32 = 128;

/// What a streamed choice assembled besides choice 0's text (kept in the completion):
/// choice 0's refusal and tool calls always; the other choices' text, refusal and tool calls
/// always (for [`Completion::choices`]); with `keep_raw`, every choice's everything.
#[derive(Debug, Default)]
struct ChoiceParts {
    index: u32,
    content: String,
    refusal: String,
    tool_calls: Vec<ToolCallParts>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default)]
struct ToolCallParts {
    index: u32,
    id: String,
    name: String,
    arguments: String,
}

impl ChoiceParts {
    /// Adds a delta's refusal and tool-call pieces (and its content, with `keep_content`).
    fn add(&mut self, delta: Delta<'_>, keep_content: bool) {
        if keep_content {
            if let Some(content) = &delta.content {
                self.content.push_str(content);
            }
        }
        if let Some(refusal) = &delta.refusal {
            self.refusal.push_str(refusal);
        }
        for call in delta.tool_calls.into_iter().flatten() {
            if call.index > MAX_INDEX {
                continue;
            }
            let at = match self.tool_calls.iter().position(|c| c.index == call.index) {
                Some(at) => at,
                None => {
                    self.tool_calls.push(ToolCallParts {
                        index: call.index,
                        ..ToolCallParts::default()
                    });
                    self.tool_calls.len() - 1
                }
            };
            let parts = &mut self.tool_calls[at];
            if let Some(id) = call.id {
                parts.id = id;
            }
            if let Some(function) = call.function {
                if let Some(name) = function.name {
                    parts.name.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    parts.arguments.push_str(&arguments);
                }
            }
        }
    }

    fn tool_calls_json(&self) -> Option<Value> {
        if self.tool_calls.is_empty() {
            return None;
        }
        let mut calls: Vec<&ToolCallParts> = self.tool_calls.iter().collect();
        calls.sort_by_key(|c| c.index);
        Some(Value::Array(
            calls
                .into_iter()
                .map(|c| tool_call_json(&c.id, &c.name, &c.arguments))
                .collect(),
        ))
    }
}

/// A streamed choice's logprobs entries so far: `content`'s, then `refusal`'s.
type LogprobsParts = (Vec<Box<RawValue>>, Vec<Box<RawValue>>);

/// A streamed choice's logprobs entries as one `logprobs` object, as a plain answer has it:
/// `{"content": [...] | null, "refusal": [...] | null}`.
fn logprobs_json((content, refusal): &LogprobsParts) -> Value {
    let list = |entries: &Vec<Box<RawValue>>| {
        (!entries.is_empty()).then(|| {
            Value::Array(
                entries
                    .iter()
                    .filter_map(|e| serde_json::from_str(e.get()).ok())
                    .collect(),
            )
        })
    };
    json!({"content": list(content), "refusal": list(refusal)})
}

/// Assembles a streamed chat completion: `data: {chunk}` events, then `data: [DONE]`.
#[derive(Debug, Default)]
pub struct StreamAccumulator {
    completion: Completion,
    done: bool,
    keep_raw: bool,
    choices: Vec<ChoiceParts>,
    id: Option<String>,
    model: Option<String>,
    created: Option<u64>,
    /// Choice 0's logprobs entries as streamed, when any chunk carried a logprobs object.
    logprobs: Option<LogprobsParts>,
}

impl StreamAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// One that also assembles the whole completion as JSON ([`Completion::raw`]).
    pub fn keeping_raw(keep_raw: bool) -> Self {
        Self {
            keep_raw,
            ..Self::default()
        }
    }

    fn parts(&mut self, index: u32) -> &mut ChoiceParts {
        let at = match self.choices.iter().position(|c| c.index == index) {
            Some(at) => at,
            None => {
                self.choices.push(ChoiceParts {
                    index,
                    ..ChoiceParts::default()
                });
                self.choices.len() - 1
            }
        };
        &mut self.choices[at]
    }

    /// Feeds one event. The event name is ignored: OpenAI sends only data lines.
    pub fn on_event(&mut self, _event: &str, data: &str) -> Result<StreamStep, StreamFailure> {
        let data = data.trim();
        if self.done {
            return Ok(StreamStep::Done);
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(StreamStep::Done);
        }
        if data.is_empty() {
            return Ok(StreamStep::Continue);
        }
        let chunk: Chunk<'_> = serde_json::from_str(data).map_err(|e| {
            StreamFailure::new(
                ErrorType::InvalidResponse,
                format!("malformed stream chunk ({e}): {}", truncate(data, 200)),
            )
        })?;
        if let Some(error) = chunk.error.as_ref().and_then(error_object) {
            let kind = [error.code.as_deref(), error.kind.as_deref()]
                .into_iter()
                .flatten()
                .find_map(ErrorType::from_provider_name)
                // An error the server reports mid-stream is on its side: worth another try.
                .unwrap_or(ErrorType::ServerError);
            return Err(StreamFailure::new(
                kind,
                format!("error event: {}", error.message),
            ));
        }
        if self.keep_raw {
            if let Some(id) = chunk.id.filter(|_| self.id.is_none()) {
                self.id = Some(id.into_owned());
            }
            if let Some(model) = chunk.model.filter(|_| self.model.is_none()) {
                self.model = Some(model.into_owned());
            }
            self.created = self.created.or(chunk.created);
        }
        if let Some(usage) = chunk.usage {
            apply_usage(&mut self.completion, usage);
        }
        let mut appended = 0;
        for choice in chunk.choices {
            let (index, first) = (choice.index, choice.index == 0);
            if index > MAX_INDEX {
                continue;
            }
            if first {
                if let Some(logprobs) = choice.logprobs {
                    let (content, refusal) = self.logprobs.get_or_insert_with(Default::default);
                    content.extend(logprobs.content.into_iter().flatten());
                    refusal.extend(logprobs.refusal.into_iter().flatten());
                }
            }
            if let Some(delta) = choice.delta {
                if first {
                    for piece in [&delta.content, &delta.refusal].into_iter().flatten() {
                        self.completion.text.push_str(piece);
                        appended += piece.len();
                    }
                }
                // Most chunks of choice 0 carry text only: its parts are for refusals, tool
                // calls and raw. The other choices' text is kept for `choices`.
                if !first || self.keep_raw || delta.refusal.is_some() || delta.tool_calls.is_some()
                {
                    let keep_content = !first || self.keep_raw;
                    self.parts(index).add(delta, keep_content);
                }
            } else if !first {
                self.parts(index);
            }
            if let Some(reason) = choice.finish_reason {
                if self.keep_raw {
                    self.parts(index).finish_reason = Some(reason.clone());
                }
                if first {
                    self.completion.finish_reason = Some(reason);
                }
            }
        }
        Ok(if appended > 0 {
            StreamStep::Delta(appended)
        } else {
            StreamStep::Continue
        })
    }

    /// The text assembled so far.
    pub fn text(&self) -> &str {
        &self.completion.text
    }

    /// The completion, or `IncompleteStream` when `[DONE]` never came.
    pub fn finish(mut self) -> Result<Completion, StreamFailure> {
        if !self.done {
            return Err(StreamFailure::new(
                ErrorType::IncompleteStream,
                format!(
                    "stream ended before [DONE] after {} bytes of text",
                    self.completion.text.len()
                ),
            ));
        }
        if let Some(first) = self.choices.iter().find(|c| c.index == 0) {
            if !first.refusal.is_empty() {
                self.completion.refusal = Some(first.refusal.clone());
            }
            self.completion.tool_calls = first.tool_calls_json().map(|v| v.to_string());
        }
        if self.choices.iter().any(|c| c.index != 0) {
            let mut texts: Vec<(u32, String)> = self
                .choices
                .iter()
                .filter(|c| c.index != 0)
                .map(|c| {
                    let text = if c.content.is_empty() {
                        &c.refusal
                    } else {
                        &c.content
                    };
                    (c.index, text.clone())
                })
                .collect();
            texts.push((0, self.completion.text.clone()));
            texts.sort_by_key(|(index, _)| *index);
            self.completion.choices = Some(texts.into_iter().map(|(_, text)| text).collect());
        }
        if let Some(logprobs) = &self.logprobs {
            self.completion.logprobs = Some(logprobs_json(logprobs).to_string());
        }
        if self.keep_raw {
            self.completion.raw = Some(self.raw_json().to_string());
        }
        Ok(self.completion)
    }

    /// The assembled `chat.completion` object: every choice, and usage as streamed.
    fn raw_json(&mut self) -> Value {
        self.choices.sort_by_key(|c| c.index);
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|c| {
                let mut message = json!({
                    "role": "assistant",
                    "content": (!c.content.is_empty()
                        || (c.refusal.is_empty() && c.tool_calls.is_empty()))
                    .then_some(c.content.as_str()),
                    "refusal": (!c.refusal.is_empty()).then_some(c.refusal.as_str()),
                });
                if let Some(calls) = c.tool_calls_json() {
                    message["tool_calls"] = calls;
                }
                let logprobs = self.logprobs.as_ref().filter(|_| c.index == 0);
                json!({
                    "index": c.index,
                    "message": message,
                    "logprobs": logprobs.map(logprobs_json),
                    "finish_reason": c.finish_reason,
                })
            })
            .collect();
        let c = &self.completion;
        let usage = c.prompt_tokens.map(|prompt| {
            let completion = c.completion_tokens.unwrap_or(0);
            let mut usage = json!({
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            });
            if let Some(cached) = c.cached_prompt_tokens {
                usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
            }
            if let Some(reasoning) = c.reasoning_tokens {
                usage["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
            }
            usage
        });
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn params(stream: bool) -> RequestParams {
        RequestParams {
            model: "gpt-4o-mini".into(),
            temperature: Some(0.0),
            max_tokens: None,
            stream,
            system: Some("Be brief.".into()),
            extra: None,
        }
    }

    fn user(text: &str) -> Message {
        Message {
            role: "user".into(),
            content: json!(text),
        }
    }

    #[test]
    fn prepare_builds_the_sdk_request() {
        let key = ApiKey::new("sk-test-key");
        let req = crate::provider::prepare(
            crate::provider::ProviderKind::OpenAi,
            "http://h/v1/",
            &key,
            &params(false),
            &[user("hi")],
        );
        assert_eq!(req.target.url, "http://h/v1/chat/completions");
        assert_eq!(
            req.target.headers,
            vec![
                ("authorization", "Bearer sk-test-key".to_string()),
                ("content-type", "application/json".to_string())
            ]
        );
        let body: Value = serde_json::from_slice(&req.body).expect("json body");
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hi"}
                ],
                "temperature": 0.0,
                "stream": false
            })
        );
    }

    #[test]
    fn prepare_streaming_asks_for_usage_and_keeps_content_parts() {
        let mut p = params(true);
        p.system = None;
        p.temperature = None;
        p.max_tokens = Some(16);
        let parts = json!([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:x"}}]);
        let messages = [Message {
            role: "user".into(),
            content: parts.clone(),
        }];
        let req = crate::provider::prepare(
            crate::provider::ProviderKind::OpenAi,
            "http://h/v1",
            &ApiKey::new("k"),
            &p,
            &messages,
        );
        let body: Value = serde_json::from_slice(&req.body).expect("json body");
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": parts}],
                "max_tokens": 16,
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn parse_response_reads_text_reason_and_usage() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Paris","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;
        assert_eq!(
            parse_response(body),
            Ok(Completion {
                text: "Paris".into(),
                finish_reason: Some("stop".into()),
                prompt_tokens: Some(12),
                completion_tokens: Some(1),
                ..Completion::default()
            })
        );
        assert!(parse_response(b"not json").is_err());
        assert!(parse_response(br#"{"choices":[]}"#).is_err());
        assert!(parse_response(br#"{"error":{"message":"boom"}}"#).is_err());
        let tool_call =
            br#"{"choices":[{"message":{"content":null},"finish_reason":"tool_calls"}]}"#;
        assert_eq!(parse_response(tool_call).map(|c| c.text), Ok(String::new()));
    }

    #[test]
    fn azure_percent_encodes_the_deployment_as_one_segment() {
        let key = ApiKey::new("az");
        let url =
            |deployment| azure_target("https://r.example/", Some(deployment), Some("v1"), &key).url;
        assert_eq!(
            url("gpt-4o_mini.v2~x"),
            "https://r.example/openai/deployments/gpt-4o_mini.v2~x/chat/completions?api-version=v1"
        );
        assert_eq!(
            url("my dep/../x?y#z%é"),
            "https://r.example/openai/deployments/my%20dep%2F..%2Fx%3Fy%23z%25%C3%A9/chat/completions?api-version=v1"
        );
        let target = azure_target("https://r.example", Some("a/b c"), None, &key);
        let (parsed, _) = target.http().expect("a valid URL");
        assert_eq!(
            parsed.path(),
            "/openai/deployments/a%2Fb%20c/chat/completions"
        );
        assert_eq!(
            azure_target("https://r.example/openai/deployments/d", None, None, &key).url,
            "https://r.example/openai/deployments/d/chat/completions"
        );
    }

    #[test]
    fn error_message_prefers_the_provider_message() {
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(error_message(body), "requests: Rate limit reached");
        assert_eq!(
            error_message(b"upstream connect error"),
            "upstream connect error"
        );
    }

    #[test]
    fn stream_assembles_text_reason_and_usage() {
        let mut acc = StreamAccumulator::new();
        let events = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo \"wörld\"\n"},"finish_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#,
        ];
        let steps: Vec<_> = events
            .iter()
            .map(|data| acc.on_event("message", data))
            .collect();
        assert_eq!(
            steps,
            vec![
                Ok(StreamStep::Continue),
                Ok(StreamStep::Delta(3)),
                Ok(StreamStep::Delta("lo \"wörld\"\n".len())),
                Ok(StreamStep::Continue),
                Ok(StreamStep::Continue),
            ]
        );
        assert_eq!(acc.on_event("message", "[DONE]"), Ok(StreamStep::Done));
        assert_eq!(
            acc.finish(),
            Ok(Completion {
                text: "Hello \"wörld\"\n".into(),
                finish_reason: Some("stop".into()),
                prompt_tokens: Some(5),
                completion_tokens: Some(3),
                ..Completion::default()
            })
        );
    }

    #[test]
    fn n_choices_and_logprobs_are_read_plain_and_streamed() {
        let body = br#"{"choices":[
            {"index":1,"message":{"content":"second"},"logprobs":null,"finish_reason":"stop"},
            {"index":0,"message":{"content":"first"},"logprobs":{"content":[{"token":"first","logprob":-0.5,"bytes":[102],"top_logprobs":[]}],"refusal":null},"finish_reason":"stop"},
            {"index":2,"message":{"content":null,"refusal":"no"},"finish_reason":"stop"}]}"#;
        let c = parse_response(body).expect("answer");
        assert_eq!(c.text, "first");
        assert_eq!(
            c.choices,
            Some(vec!["first".into(), "second".into(), "no".into()])
        );
        let logprobs: Value = serde_json::from_str(c.logprobs.as_deref().unwrap()).unwrap();
        assert_eq!(logprobs["content"][0]["logprob"], json!(-0.5));
        // One choice: no `choices`; `logprobs: null`: none.
        let one = br#"{"choices":[{"index":0,"message":{"content":"a"},"logprobs":null}]}"#;
        let c = parse_response(one).expect("answer");
        assert_eq!((c.choices, c.logprobs), (None, None));

        let entry = |t: &str| json!({"token": t, "logprob": -0.1, "bytes": [], "top_logprobs": []});
        let chunk = |index: u32, content: &str, logprobs: Value| {
            json!({"choices": [{"index": index, "delta": {"content": content}, "logprobs": logprobs, "finish_reason": null}]}).to_string()
        };
        for keep_raw in [false, true] {
            let mut acc = StreamAccumulator::keeping_raw(keep_raw);
            let events = [
                chunk(2, "C", Value::Null),
                chunk(1, "B", Value::Null),
                chunk(0, "A", json!({"content": [entry("A")], "refusal": null})),
                chunk(1, "b", Value::Null),
                chunk(0, "a", json!({"content": [entry("a")], "refusal": null})),
                chunk(2, "c", Value::Null),
                json!({"choices": [{"index": 2, "delta": {}, "finish_reason": "stop"}, {"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string(),
            ];
            for event in &events {
                acc.on_event("", event).expect("chunk");
            }
            acc.on_event("", "[DONE]").expect("done");
            let c = acc.finish().expect("stream");
            assert_eq!(c.text, "Aa");
            assert_eq!(
                c.choices,
                Some(vec!["Aa".into(), "Bb".into(), "Cc".into()]),
                "keep_raw {keep_raw}"
            );
            let logprobs: Value = serde_json::from_str(c.logprobs.as_deref().unwrap()).unwrap();
            assert_eq!(
                logprobs,
                json!({"content": [entry("A"), entry("a")], "refusal": null})
            );
            if keep_raw {
                let raw: Value = serde_json::from_str(c.raw.as_deref().unwrap()).unwrap();
                assert_eq!(raw["choices"][0]["logprobs"], logprobs);
                assert_eq!(raw["choices"][2]["message"]["content"], "Cc");
            }
        }
        // A one-choice stream without logprobs has neither.
        let mut acc = StreamAccumulator::new();
        acc.on_event("", &chunk(0, "x", Value::Null)).unwrap();
        acc.on_event("", "[DONE]").unwrap();
        let c = acc.finish().unwrap();
        assert_eq!((c.choices, c.logprobs), (None, None));
    }

    #[test]
    fn stream_failures() {
        let mut acc = StreamAccumulator::new();
        assert_eq!(
            acc.on_event("message", r#"{"choices":[{"delta":{"content":"a"}}]}"#),
            Ok(StreamStep::Delta(1))
        );
        assert_eq!(
            acc.finish().map_err(|f| f.kind),
            Err(ErrorType::IncompleteStream)
        );

        let mut acc = StreamAccumulator::new();
        let err = acc
            .on_event(
                "message",
                r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
            )
            .expect_err("error chunk");
        assert_eq!(err.kind, ErrorType::ServerError);
        assert!(err.message.contains("The server had an error"));

        let mut acc = StreamAccumulator::new();
        let err = acc
            .on_event(
                "message",
                r#"{"error":{"message":"slow down","type":"tokens","code":"rate_limit_exceeded"}}"#,
            )
            .expect_err("rate limit chunk");
        assert_eq!(err.kind, ErrorType::RateLimited);

        let mut acc = StreamAccumulator::new();
        let err = acc.on_event("message", "{not json").expect_err("bad chunk");
        assert_eq!(err.kind, ErrorType::InvalidResponse);
    }
}
