//! Anthropic Messages wire format, server side: request validation, bodies, SSE events, errors.

use super::errors::ApiError;
use super::reply::stream_pieces;
use super::request::{
    extra_fields, schema_answer, tool_answer, Answer, ChatRequest, Completion, TextTally, Tool,
    ToolChoice,
};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Content block types the real API accepts; only "text" contributes to the mock's reply.
const BLOCK_TYPES: [&str; 8] = [
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "search_result",
];

fn field_required(path: &str) -> ApiError {
    ApiError::invalid(format!("{path}: Field required"))
}

/// Validates a `/v1/messages` body as the real API does (the subset the mock needs).
pub(crate) fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("There was an error parsing the body: {e}")))?;
    let Value::Object(obj) = &value else {
        return Err(ApiError::invalid("Input should be a valid dictionary"));
    };
    let model = match obj.get("model") {
        None => return Err(field_required("model")),
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid(
                "model: String should have at least 1 character",
            ))
        }
        Some(_) => return Err(ApiError::invalid("model: Input should be a valid string")),
    };
    let max_tokens = match obj.get("max_tokens") {
        None => return Err(field_required("max_tokens")),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(k) if k >= 1 => u32::try_from(k).unwrap_or(u32::MAX),
            Some(_) => {
                return Err(ApiError::invalid(
                    "max_tokens: Input should be greater than or equal to 1",
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "max_tokens: Input should be a valid integer",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "max_tokens: Input should be a valid integer",
            ))
        }
    };
    let mut tally = TextTally::default();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => tally.add_system(blocks_text(system, "system")?),
    }
    let messages = match obj.get("messages") {
        None => return Err(field_required("messages")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(ApiError::invalid(
                "messages: at least one message is required",
            ))
        }
        Some(Value::Array(m)) => m,
        Some(_) => return Err(ApiError::invalid("messages: Input should be a valid list")),
    };
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(ApiError::invalid(format!(
                "messages.{i}: Input should be a valid dictionary"
            )));
        };
        let role = match message.get("role") {
            None => return Err(field_required(&format!("messages.{i}.role"))),
            Some(Value::String(r)) if r == "user" || r == "assistant" => r.as_str(),
            // The real API rejects "system" here: the system prompt is a top-level field.
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )))
            }
        };
        let text = match message.get("content") {
            None => return Err(field_required(&format!("messages.{i}.content"))),
            Some(content) => blocks_text(content, &format!("messages.{i}.content"))?,
        };
        tally.add(text, role == "user");
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream: Input should be a valid boolean")),
    };
    let last_user_text = tally.last_user_text.unwrap_or_default();
    let answer = answer(obj, &last_user_text)?;
    Ok(ChatRequest {
        n: 1,
        logprobs: None,
        model,
        stream,
        include_usage: false,
        max_tokens: Some(max_tokens),
        prompt_tokens: tally.prompt_tokens,
        system: tally.system,
        system_tokens: tally.system_tokens,
        reasoning: false,
        answer,
        fields: extra_fields(obj),
        last_user_text,
    })
}

/// A `tool_use` block when `tools` ask for one (see `request::tool_answer`), else structured
/// output for `output_config.format` (or the beta's `output_format`) of type `json_schema`,
/// else the echo. Server tools (those with a `type` other than `custom`) are never called.
fn answer(obj: &Map<String, Value>, last_user_text: &str) -> Result<Answer, ApiError> {
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => {
            let mut declared = Vec::with_capacity(tools.len());
            for (i, tool) in tools.iter().enumerate() {
                let Value::Object(tool) = tool else {
                    return Err(ApiError::invalid(format!(
                        "tools.{i}: Input should be a valid dictionary"
                    )));
                };
                if tool
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t != "custom")
                {
                    continue;
                }
                let name = match tool.get("name") {
                    Some(Value::String(name)) => name.as_str(),
                    _ => return Err(field_required(&format!("tools.{i}.custom.name"))),
                };
                let Some(schema) = tool.get("input_schema") else {
                    return Err(field_required(&format!("tools.{i}.custom.input_schema")));
                };
                declared.push(Tool {
                    name,
                    schema: Some(schema),
                });
            }
            declared
        }
        Some(_) => return Err(ApiError::invalid("tools: Input should be a valid list")),
    };
    if !tools.is_empty() {
        let choice = match obj.get("tool_choice") {
            Some(choice) => match choice.get("type").and_then(Value::as_str) {
                Some("none") => ToolChoice::None,
                Some("any") => ToolChoice::Required,
                Some("tool") => match choice.get("name").and_then(Value::as_str) {
                    Some(name) => ToolChoice::Named(name),
                    None => return Err(field_required("tool_choice.tool.name")),
                },
                _ => ToolChoice::Auto,
            },
            None => ToolChoice::Auto,
        };
        if let Some(answer) = tool_answer(&tools, choice, last_user_text) {
            return Ok(answer);
        }
    }
    let format = obj
        .get("output_config")
        .and_then(|c| c.get("format"))
        .or_else(|| obj.get("output_format"))
        .filter(|f| !f.is_null());
    match format {
        Some(format) if format.get("type").and_then(Value::as_str) == Some("json_schema") => {
            Ok(schema_answer(format.get("schema")))
        }
        Some(_) => Err(ApiError::invalid(
            "output_config.format.type: Input should be 'json_schema'",
        )),
        None => Ok(Answer::Echo),
    }
}

/// The text of a string or a list of content blocks (text blocks concatenated).
fn blocks_text(content: &Value, path: &str) -> Result<String, ApiError> {
    let blocks = match content {
        Value::String(s) => return Ok(s.clone()),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ApiError::invalid(format!(
                "{path}: Input should be a valid list"
            )))
        }
    };
    let mut text = String::new();
    for (j, block) in blocks.iter().enumerate() {
        let Value::Object(block) = block else {
            return Err(ApiError::invalid(format!(
                "{path}.{j}: Input should be a valid dictionary or object to extract fields from"
            )));
        };
        let kind = match block.get("type") {
            Some(Value::String(t)) => t.as_str(),
            _ => return Err(field_required(&format!("{path}.{j}.type"))),
        };
        // The system prompt takes text blocks only.
        let allowed = if path == "system" {
            kind == "text"
        } else {
            BLOCK_TYPES.contains(&kind)
        };
        if !allowed {
            return Err(ApiError::invalid(format!(
                "{path}.{j}: Input tag '{kind}' found using 'type' does not match any of the expected tags"
            )));
        }
        if kind == "text" {
            match block.get("text") {
                Some(Value::String(t)) => text.push_str(t),
                None => return Err(field_required(&format!("{path}.{j}.text"))),
                Some(_) => {
                    return Err(ApiError::invalid(format!(
                        "{path}.{j}.text: Input should be a valid string"
                    )))
                }
            }
        }
    }
    Ok(text)
}

fn stop_reason(c: &Completion) -> &'static str {
    if c.tool_call.is_some() {
        "tool_use"
    } else if c.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// Usage as the real API reports it: `input_tokens` is the part of the prompt neither read from
/// nor written to the cache.
fn usage(req: &ChatRequest, c: &Completion, output_tokens: u64) -> Value {
    json!({
        "input_tokens": req.prompt_tokens - c.cached_tokens - c.cache_write_tokens,
        "cache_creation_input_tokens": c.cache_write_tokens,
        "cache_read_input_tokens": c.cached_tokens,
        "output_tokens": output_tokens,
    })
}

fn content(c: &Completion) -> Value {
    match &c.tool_call {
        Some((id, name, arguments)) => {
            let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
            json!([{"type": "tool_use", "id": id, "name": name, "input": input}])
        }
        None => json!([{"type": "text", "text": c.text}]),
    }
}

/// The non-streaming `message` body.
pub(crate) fn body(req: &ChatRequest, c: &Completion) -> String {
    json!({
        "id": c.id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content(c),
        "stop_reason": stop_reason(c),
        "stop_sequence": null,
        "usage": usage(req, c, c.completion_tokens),
    })
    .to_string()
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The SSE events of a streamed reply, in the real API's order.
pub(crate) fn stream_frames(req: &ChatRequest, c: &Completion) -> Vec<Bytes> {
    let pieces = stream_pieces(&c.text);
    let mut frames = Vec::with_capacity(pieces.len() + 6);
    frames.push(event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": c.id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(req, c, 1),
        }}),
    ));
    if let Some((id, name, arguments)) = &c.tool_call {
        frames.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": id, "name": name, "input": {}}}),
        ));
        frames.push(event("ping", &json!({"type": "ping"})));
        let middle = (arguments.len() / 2..=arguments.len())
            .find(|&i| arguments.is_char_boundary(i))
            .unwrap_or(arguments.len());
        for piece in [&arguments[..middle], &arguments[middle..]] {
            frames.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
    } else {
        frames.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        frames.push(event("ping", &json!({"type": "ping"})));
    }
    for piece in pieces {
        frames.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    frames.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(event(
        "message_delta",
        &json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(c), "stop_sequence": null},
            "usage": {"output_tokens": c.completion_tokens}}),
    ));
    frames.push(event("message_stop", &json!({"type": "message_stop"})));
    frames
}

/// The status and error JSON the real API sends for `err`.
pub(crate) fn error(err: &ApiError) -> (u16, String) {
    let (status, kind, message): (u16, &str, String) = match err {
        ApiError::Auth { .. } => (401, "authentication_error", "invalid x-api-key".into()),
        ApiError::MissingVersion => (
            400,
            "invalid_request_error",
            "anthropic-version: header is required".into(),
        ),
        ApiError::Invalid { message, .. } => (400, "invalid_request_error", message.clone()),
        ApiError::BadMarker => (
            400,
            "invalid_request_error",
            "Output blocked by content filtering policy".into(),
        ),
        ApiError::Quota => (
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.".into(),
        ),
        ApiError::RateLimited { .. } => (
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.".into(),
        ),
        ApiError::Server(529) | ApiError::Overloaded => (529, "overloaded_error", "Overloaded".into()),
        ApiError::Server(code) => (*code, "api_error", "Internal server error".into()),
        ApiError::NotFound { .. } => (404, "not_found_error", "Not found".into()),
        ApiError::MethodNotAllowed => (405, "invalid_request_error", "Method not allowed".into()),
        ApiError::BodyTooLarge => (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.".into()),
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, body.to_string())
}
