//! OpenAI Chat Completions wire format, server side: request validation, bodies, SSE chunks, errors.

use super::errors::ApiError;
use super::reply::stream_pieces;
use super::request::{
    extra_fields, json_kind, schema_answer, tool_answer, Answer, ChatRequest, Completion,
    TextTally, Tool, ToolChoice,
};
use crate::provider::is_reasoning_model;
use bytes::Bytes;
use serde_json::{json, Map, Value};

const ROLES: &str = "'system', 'assistant', 'user', 'function', 'tool', and 'developer'";
const PART_TYPES: [&str; 6] = [
    "text",
    "image_url",
    "input_audio",
    "refusal",
    "audio",
    "file",
];

fn invalid(message: String, param: impl Into<String>, code: &'static str) -> ApiError {
    ApiError::Invalid {
        message,
        param: Some(param.into()),
        code: Some(code),
    }
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    invalid(
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            json_kind(got)
        ),
        param,
        "invalid_type",
    )
}

fn missing(param: &str) -> ApiError {
    invalid(
        format!("Missing required parameter: '{param}'."),
        param,
        "missing_required_parameter",
    )
}

/// Validates a `/v1/chat/completions` body as the real API does (the subset the mock needs).
/// `default_model`: Azure's deployment, the model when the body names none.
pub(crate) fn parse(body: &[u8], default_model: Option<&str>) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
             using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
             sent was not valid JSON. If you have trouble figuring out how to fix this, please \
             contact us through our help center at help.openai.com.)",
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(wrong_type("body", "an object", &value));
    };
    let model = match (obj.get("model"), default_model) {
        (Some(Value::String(m)), _) if !m.is_empty() => m.clone(),
        (None | Some(Value::Null), Some(deployment)) => deployment.to_string(),
        (None | Some(Value::Null) | Some(Value::String(_)), _) => {
            return Err(ApiError::invalid("you must provide a model parameter"))
        }
        (Some(other), _) => return Err(wrong_type("model", "a string", other)),
    };
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.".into(),
                "messages",
                "empty_array",
            ))
        }
        Some(Value::Array(m)) => m,
        Some(other) => return Err(wrong_type("messages", "an array of objects", other)),
    };
    let mut tally = TextTally::default();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(wrong_type(&param, "an object", message));
        };
        let role = match message.get("role") {
            None | Some(Value::Null) => return Err(missing(&format!("{param}.role"))),
            Some(Value::String(r)) => r.as_str(),
            Some(other) => return Err(wrong_type(&format!("{param}.role"), "a string", other)),
        };
        if !matches!(
            role,
            "system" | "assistant" | "user" | "function" | "tool" | "developer"
        ) {
            return Err(invalid(
                format!("Invalid value: '{role}'. Supported values are: {ROLES}."),
                format!("{param}.role"),
                "invalid_value",
            ));
        }
        let text = content_text(message, role, &param)?;
        if role == "system" || role == "developer" {
            tally.add_system(text);
        } else {
            tally.add(text, role == "user");
        }
    }
    let reasoning = is_reasoning_model(&model);
    if reasoning {
        refuse_for_reasoning(obj)?;
    }
    let max_tokens = match obj.get("max_completion_tokens") {
        Some(v) if !v.is_null() => positive_int(v, "max_completion_tokens")?,
        _ => match obj.get("max_tokens") {
            Some(v) => positive_int(v, "max_tokens")?,
            None => None,
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(wrong_type("stream", "a boolean", other)),
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.".into(),
                "stream_options",
                "invalid_value",
            ))
        }
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(wrong_type(
                    "stream_options.include_usage",
                    "a boolean",
                    other,
                ))
            }
        },
        Some(other) => return Err(wrong_type("stream_options", "an object", other)),
    };
    let n = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => bounded_int(v, "n", 1, MAX_N)?,
    };
    let logprobs = match obj.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => return Err(wrong_type("logprobs", "a boolean", other)),
    };
    let top_logprobs = match obj.get("top_logprobs") {
        None | Some(Value::Null) => None,
        Some(v) => Some(bounded_int(v, "top_logprobs", 0, MAX_TOP_LOGPROBS)?),
    };
    if top_logprobs.is_some() && !logprobs {
        return Err(invalid(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is set.".into(),
            "top_logprobs",
            "invalid_value",
        ));
    }
    let last_user_text = tally.last_user_text.unwrap_or_default();
    let answer = answer(obj, &last_user_text)?;
    Ok(ChatRequest {
        n,
        logprobs: logprobs.then_some(top_logprobs.unwrap_or(0)),
        model,
        stream,
        include_usage,
        max_tokens,
        prompt_tokens: tally.prompt_tokens,
        system: tally.system,
        system_tokens: tally.system_tokens,
        reasoning,
        answer,
        fields: extra_fields(obj),
        last_user_text,
    })
}

/// What reasoning models refuse, with the real API's errors: `max_tokens` (they take
/// `max_completion_tokens`) and any temperature but the default 1.
fn refuse_for_reasoning(obj: &Map<String, Value>) -> Result<(), ApiError> {
    if obj.get("max_tokens").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".into(),
            "max_tokens",
            "unsupported_parameter",
        ));
    }
    match obj.get("temperature") {
        Some(Value::Number(t)) if t.as_f64() != Some(1.0) => Err(invalid(
            format!("Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."),
            "temperature",
            "unsupported_value",
        )),
        _ => Ok(()),
    }
}

/// A tool call when `tools` ask for one (see `request::tool_answer`), else structured output
/// for `response_format` `json_schema` (`json_object`: `{}`), else the echo.
fn answer(obj: &Map<String, Value>, last_user_text: &str) -> Result<Answer, ApiError> {
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, tool)| {
                let function = tool
                    .get("function")
                    .ok_or_else(|| missing(&format!("tools[{i}].function")))?;
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing(&format!("tools[{i}].function.name")))?;
                Ok(Tool {
                    name,
                    schema: function.get("parameters"),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?,
        Some(other) => return Err(wrong_type("tools", "an array", other)),
    };
    if !tools.is_empty() {
        let choice = match obj.get("tool_choice") {
            Some(Value::String(c)) if c == "none" => ToolChoice::None,
            Some(Value::String(c)) if c == "required" => ToolChoice::Required,
            Some(Value::Object(c)) => match c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => ToolChoice::Named(name),
                None => ToolChoice::Auto,
            },
            _ => ToolChoice::Auto,
        };
        if let Some(answer) = tool_answer(&tools, choice, last_user_text) {
            return Ok(answer);
        }
    }
    let Some(format) = obj.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(Answer::Echo);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let spec = format
                .get("json_schema")
                .filter(|v| v.is_object())
                .ok_or_else(|| missing("response_format.json_schema"))?;
            Ok(schema_answer(spec.get("schema")))
        }
        Some("json_object") => Ok(Answer::Json("{}".to_string())),
        Some("text") => Ok(Answer::Echo),
        Some(other) => Err(invalid(
            format!("Invalid value: '{other}'. Supported values are: 'text', 'json_object', and 'json_schema'."),
            "response_format.type",
            "invalid_value",
        )),
        None => Err(missing("response_format.type")),
    }
}

/// The text of one message: string content, or its text parts concatenated.
fn content_text(message: &Map<String, Value>, role: &str, param: &str) -> Result<String, ApiError> {
    let content = message.get("content");
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        // Assistant turns may carry only tool calls.
        None | Some(Value::Null) if role == "assistant" || role == "function" => Ok(String::new()),
        None | Some(Value::Null) => Err(missing(&format!("{param}.content"))),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let part_param = format!("{param}.content[{j}]");
                let Value::Object(part) = part else {
                    return Err(wrong_type(&part_param, "an object", part));
                };
                let kind = match part.get("type") {
                    Some(Value::String(t)) => t.as_str(),
                    None | Some(Value::Null) => return Err(missing(&format!("{part_param}.type"))),
                    Some(other) => {
                        return Err(wrong_type(&format!("{part_param}.type"), "a string", other))
                    }
                };
                if !PART_TYPES.contains(&kind) {
                    return Err(invalid(
                        format!("Invalid value: '{kind}'. Supported values are: 'text', 'image_url', 'input_audio', 'refusal', 'audio', and 'file'."),
                        format!("{part_param}.type"),
                        "invalid_value",
                    ));
                }
                if kind == "text" {
                    match part.get("text") {
                        Some(Value::String(t)) => text.push_str(t),
                        None | Some(Value::Null) => {
                            return Err(missing(&format!("{part_param}.text")))
                        }
                        Some(other) => {
                            return Err(wrong_type(
                                &format!("{part_param}.text"),
                                "a string",
                                other,
                            ))
                        }
                    }
                }
            }
            Ok(text)
        }
        Some(other) => Err(wrong_type(
            &format!("{param}.content"),
            "one of a string or array of objects",
            other,
        )),
    }
}

/// OpenAI's bounds of `n` and `top_logprobs`.
const MAX_N: u32 = 128;
const MAX_TOP_LOGPROBS: u32 = 20;

/// An integer in `min..=max`, refused with the real API's errors outside it.
fn bounded_int(v: &Value, param: &str, min: u32, max: u32) -> Result<u32, ApiError> {
    let Some(k) = v.as_i64().filter(|_| v.is_number()) else {
        return Err(wrong_type(param, "an integer", v));
    };
    if k < i64::from(min) {
        return Err(invalid(
            format!("Invalid '{param}': integer below minimum value. Expected a value >= {min}, but got {k} instead."),
            param,
            "integer_below_min_value",
        ));
    }
    if k > i64::from(max) {
        return Err(invalid(
            format!("Invalid '{param}': integer above maximum value. Expected a value <= {max}, but got {k} instead."),
            param,
            "integer_above_max_value",
        ));
    }
    Ok(k as u32)
}

fn positive_int(v: &Value, param: &str) -> Result<Option<u32>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(k) if k >= 1 => Ok(Some(u32::try_from(k).unwrap_or(u32::MAX))),
            Some(k) => Err(invalid(
                format!("Invalid '{param}': integer below minimum value. Expected a value >= 1, but got {k} instead."),
                param,
                "integer_below_min_value",
            )),
            None => Err(wrong_type(param, "an integer", v)),
        },
        other => Err(wrong_type(param, "an integer", other)),
    }
}

fn finish_reason(c: &Completion) -> &'static str {
    if c.tool_call.is_some() {
        "tool_calls"
    } else if c.truncated {
        "length"
    } else {
        "stop"
    }
}

/// Usage; `prompt_tokens_details` and `completion_tokens_details` only when they hold a
/// non-zero count (cached tokens, reasoning tokens), so that a plain request's body stays small.
fn usage(req: &ChatRequest, c: &Completion) -> Value {
    let mut usage = json!({
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": req.prompt_tokens + c.completion_tokens,
    });
    if c.cached_tokens > 0 {
        usage["prompt_tokens_details"] =
            json!({"cached_tokens": c.cached_tokens, "audio_tokens": 0});
    }
    if req.reasoning {
        usage["completion_tokens_details"] = json!({
            "reasoning_tokens": c.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        });
    }
    usage
}

fn tool_calls(c: &Completion) -> Option<Value> {
    let (id, name, arguments) = c.tool_call.as_ref()?;
    Some(
        json!([{"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]),
    )
}

/// One `logprobs.content` entry: the reply's `k`-th word (a stream piece, with the whitespace
/// before it) as the token, logprob `-(k + 1) / 100`, its UTF-8 bytes, and `top` alternatives:
/// the token itself, then `"alt1"`, `"alt2"`, ... each 1 lower than the one before.
fn logprob_entry(k: usize, token: &str, top: u32) -> Value {
    let logprob = -((k + 1) as f64) / 100.0;
    let entry = |token: &str, logprob: f64| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    let alternatives: Vec<Value> = (0..top)
        .map(|j| match j {
            0 => entry(token, logprob),
            j => entry(&format!("alt{j}"), logprob - f64::from(j)),
        })
        .collect();
    let mut value = entry(token, logprob);
    value["top_logprobs"] = Value::Array(alternatives);
    value
}

/// The `logprobs` object of a choice: one entry per word of the reply ([`logprob_entry`]);
/// `content` is null for a tool call. `None` when the request did not ask for logprobs.
fn logprobs(req: &ChatRequest, c: &Completion) -> Option<Value> {
    let top = req.logprobs?;
    let content = c.tool_call.is_none().then(|| {
        stream_pieces(&c.text)
            .into_iter()
            .enumerate()
            .map(|(k, piece)| logprob_entry(k, piece, top))
            .collect::<Vec<_>>()
    });
    Some(json!({"content": content, "refusal": null}))
}

/// The non-streaming `chat.completion` body: `n` choices, each the same answer.
pub(crate) fn body(req: &ChatRequest, c: &Completion) -> String {
    let mut message = json!({"role": "assistant", "content": c.text, "refusal": null});
    if let Some(calls) = tool_calls(c) {
        message["content"] = Value::Null;
        message["tool_calls"] = calls;
    }
    let logprobs = logprobs(req, c);
    let choices: Vec<Value> = (0..req.n)
        .map(|index| {
            json!({
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason(c),
            })
        })
        .collect();
    json!({
        "id": c.id,
        "object": "chat.completion",
        "created": c.created,
        "model": req.model,
        "choices": choices,
        "usage": usage(req, c),
    })
    .to_string()
}

/// The SSE frames of a streamed reply: a role chunk, one chunk per word (with that word's
/// logprobs entry when asked for), a finish chunk, the usage chunk when asked for, then
/// `[DONE]`. With `n > 1` every step is sent once per choice, one choice per chunk, the highest
/// index first (so a client must assemble choices by their `index`).
pub(crate) fn stream_frames(req: &ChatRequest, c: &Completion) -> Vec<Bytes> {
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut v = json!({
            "id": c.id,
            "object": "chat.completion.chunk",
            "created": c.created,
            "model": req.model,
            "choices": choices,
        });
        // With include_usage the real API sends `"usage": null` on every chunk but the last.
        if req.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let n = req.n.max(1);
    let top = req.logprobs;
    // One step: (delta, finish reason, logprobs); each becomes a chunk per choice.
    let mut steps: Vec<(Value, Value, Value)> = Vec::new();
    let mut choice = |delta: Value, finish: Value| steps.push((delta, finish, Value::Null));
    let pieces = stream_pieces(&c.text);
    if let Some((id, name, arguments)) = &c.tool_call {
        // As the real API streams a call: the id and name first, then the arguments in pieces.
        choice(
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        );
        let middle = arguments.len() / 2;
        let middle = (middle..=arguments.len())
            .find(|&i| arguments.is_char_boundary(i))
            .unwrap_or(arguments.len());
        for piece in [&arguments[..middle], &arguments[middle..]] {
            choice(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                Value::Null,
            );
        }
    } else {
        choice(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        );
    }
    for (k, piece) in pieces.into_iter().enumerate() {
        let logprobs = top.map_or(
            Value::Null,
            |top| json!({"content": [logprob_entry(k, piece, top)], "refusal": null}),
        );
        steps.push((json!({"content": piece}), Value::Null, logprobs));
    }
    steps.push((json!({}), json!(finish_reason(c)), Value::Null));
    let mut frames = Vec::with_capacity(steps.len() * n as usize + 2);
    for (delta, finish, logprobs) in steps {
        for index in (0..n).rev() {
            let choices = json!([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]);
            frames.push(chunk(choices, None));
        }
    }
    if req.include_usage {
        frames.push(chunk(json!([]), Some(usage(req, c))));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

/// The status and error JSON the real API sends for `err`.
pub(crate) fn error(err: &ApiError) -> (u16, String) {
    let (status, message, kind, param, code): (u16, String, &str, Option<&str>, Option<&str>) =
        match err {
            ApiError::Auth { key } if key.is_empty() => (
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.".into(),
                "invalid_request_error",
                None,
                None,
            ),
            ApiError::Auth { key } => (
                401,
                format!("Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            ApiError::MissingVersion => (400, "anthropic-version header is required".into(), "invalid_request_error", None, None),
            ApiError::Invalid { message, param, code } => {
                (400, message.clone(), "invalid_request_error", param.as_deref(), *code)
            }
            ApiError::BadMarker => (
                400,
                "Invalid prompt: your prompt was flagged as potentially violating our usage policy.".into(),
                "invalid_request_error",
                None,
                Some("invalid_prompt"),
            ),
            ApiError::Quota => (
                429,
                "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.".into(),
                "insufficient_quota",
                None,
                Some("insufficient_quota"),
            ),
            ApiError::RateLimited { limit, retry_after, .. } => (
                429,
                format!(
                    "Rate limit reached for requests per min (RPM): Limit {limit}, Used {limit}, Requested 1. Please try again in {}ms.",
                    retry_after.as_millis()
                ),
                "requests",
                Some("requests"),
                Some("rate_limit_exceeded"),
            ),
            ApiError::Server(529) => (529, "The server is overloaded, please try again later.".into(), "overloaded_error", None, None),
            ApiError::Overloaded => (503, "The server is overloaded or not ready yet.".into(), "server_error", None, None),
            ApiError::Server(503) => (503, "The engine is currently overloaded, please try again later.".into(), "server_error", None, None),
            ApiError::Server(code) => (*code, "The server had an error while processing your request. Sorry about that!".into(), "server_error", None, None),
            ApiError::NotFound { path } => (404, format!("Invalid URL (POST {path})"), "invalid_request_error", None, None),
            ApiError::MethodNotAllowed => (405, "Method not allowed; use POST.".into(), "invalid_request_error", None, None),
            ApiError::BodyTooLarge => (413, "The request body is too large.".into(), "invalid_request_error", None, None),
        };
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, body.to_string())
}
