//! OpenAI Chat Completions wire format: request body, JSON response and streamed chunks.

use super::raw::RawMessages;
use super::Target;
use super::{
    describe_error_body, error_object, snippet, truncate, Completion, Content, Message, OutMessage,
    PreparedRequest, RequestParams, StreamFailure, StreamStep, Usage,
};
use crate::error::ErrorType;
use crate::secret::ApiKey;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Serialize)]
struct Body<'a, M> {
    model: &'a str,
    messages: M,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
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
/// when streaming so the last chunk carries token counts.
pub fn prepare(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &[Message],
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
    request(target, params, out)
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

/// [`prepare`] for messages kept as JSON text: written into the body as they are.
pub fn prepare_raw(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: &RawMessages,
) -> PreparedRequest {
    match params.system.as_deref() {
        None => request(target, params, messages.json()),
        Some(system) => match messages.with_system(system) {
            Some(with_system) => request(target, params, &*with_system),
            None => prepare(target, params, &messages.parsed()),
        },
    }
}

fn request<M: Serialize>(
    target: &Arc<Target>,
    params: &RequestParams,
    messages: M,
) -> PreparedRequest {
    let body = Body {
        model: &params.model,
        messages,
        temperature: params.temperature,
        max_tokens: params.max_tokens,
        stream: params.stream,
        stream_options: params.stream.then_some(StreamOptions {
            include_usage: true,
        }),
    };
    PreparedRequest {
        target: Arc::clone(target),
        // Serializing borrowed strings and JSON values cannot fail.
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
    }
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ResponseMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
    /// Set instead of `content` when the model declines.
    #[serde(default)]
    refusal: Option<String>,
}

/// Reads a non-streaming response: the first choice's text and finish reason, plus usage.
pub fn parse_response(body: &[u8]) -> Result<Completion, String> {
    let response: Response = serde_json::from_slice(body).map_err(|e| {
        format!(
            "response is not chat completion JSON ({e}): {}",
            snippet(body)
        )
    })?;
    if let Some(error) = response.error.as_ref().and_then(error_object) {
        return Err(format!("error in a 2xx response: {}", error.message));
    }
    let choice = response
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| format!("response has no choices: {}", snippet(body)))?;
    let message = choice.message.unwrap_or(ResponseMessage {
        content: None,
        refusal: None,
    });
    let usage = response.usage.unwrap_or_default();
    Ok(Completion {
        text: message.content.or(message.refusal).unwrap_or_default(),
        finish_reason: choice.finish_reason,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
    })
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
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    // Borrowed when the JSON string has no escapes: most deltas are a few plain words.
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
}

/// Assembles a streamed chat completion: `data: {chunk}` events, then `data: [DONE]`.
#[derive(Debug, Default)]
pub struct StreamAccumulator {
    completion: Completion,
    done: bool,
}

impl StreamAccumulator {
    pub fn new() -> Self {
        Self::default()
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
        if let Some(usage) = chunk.usage {
            self.completion.prompt_tokens = usage.prompt_tokens;
            self.completion.completion_tokens = usage.completion_tokens;
        }
        let mut appended = 0;
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(delta) = choice.delta {
                for piece in [delta.content, delta.refusal].into_iter().flatten() {
                    self.completion.text.push_str(&piece);
                    appended += piece.len();
                }
            }
            if choice.finish_reason.is_some() {
                self.completion.finish_reason = choice.finish_reason;
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
    pub fn finish(self) -> Result<Completion, StreamFailure> {
        if self.done {
            Ok(self.completion)
        } else {
            Err(StreamFailure::new(
                ErrorType::IncompleteStream,
                format!(
                    "stream ended before [DONE] after {} bytes of text",
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

    fn params(stream: bool) -> RequestParams {
        RequestParams {
            model: "gpt-4o-mini".into(),
            temperature: Some(0.0),
            max_tokens: None,
            stream,
            system: Some("Be brief.".into()),
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
            })
        );
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
