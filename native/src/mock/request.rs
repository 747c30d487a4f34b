//! What the mock needs from a chat request once a provider module has validated it.

use super::schema::minimal_instance;
use serde_json::{Map, Value};

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
    /// The system prompt (OpenAI: its system and developer messages joined; Anthropic: the
    /// `system` field), for the cache rule; `None` when there is none.
    pub system: Option<String>,
    /// Words of the system prompt (part of `prompt_tokens`).
    pub system_tokens: u64,
    /// An OpenAI reasoning model (`provider::is_reasoning_model`): reports reasoning tokens.
    pub reasoning: bool,
    /// What to answer with.
    pub answer: Answer,
    /// The request's top-level fields beyond `model` and `messages`, for the stats.
    pub fields: Vec<String>,
    /// OpenAI `n`: how many choices to answer with (1..=128; Anthropic: always 1).
    pub n: u32,
    /// OpenAI `logprobs: true`: `Some(top_logprobs)` (0 when not given); `None` otherwise.
    pub logprobs: Option<u32>,
}

/// What the mock answers a request with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// The echo rule (`reply.rs`).
    Echo,
    /// Structured output: this JSON text (the schema's minimal instance, `schema.rs`).
    Json(String),
    /// A call of the tool `name`, with these arguments (JSON text).
    Tool { name: String, arguments: String },
}

/// A tool as a request declares it: its name and its parameters' JSON schema.
pub(crate) struct Tool<'a> {
    pub name: &'a str,
    pub schema: Option<&'a Value>,
}

/// How a request lets the model use its tools.
pub(crate) enum ToolChoice<'a> {
    /// Never (`"none"`).
    None,
    /// When the prompt names a tool (`"auto"`, the default).
    Auto,
    /// Always: the tool the prompt names, else the first (`"required"`, Anthropic `any`).
    Required,
    /// Always this tool.
    Named(&'a str),
}

/// The tool call the mock makes, if any: a forced tool, else the first tool (in the request's
/// order) whose name occurs in the last user message, else (when a call is required) the
/// first tool. Its arguments are the minimal instance of the tool's schema.
pub(crate) fn tool_answer(
    tools: &[Tool<'_>],
    choice: ToolChoice<'_>,
    last_user_text: &str,
) -> Option<Answer> {
    let named = || tools.iter().find(|t| last_user_text.contains(t.name));
    let tool = match choice {
        ToolChoice::None => None,
        ToolChoice::Auto => named(),
        ToolChoice::Required => named().or(tools.first()),
        ToolChoice::Named(name) => tools.iter().find(|t| t.name == name),
    }?;
    let arguments = match tool.schema {
        Some(schema) => match minimal_instance(schema) {
            // A tool's input is an object, even when its schema says too little.
            Value::Null => Value::Object(Map::new()),
            other => other,
        },
        None => Value::Object(Map::new()),
    };
    Some(Answer::Tool {
        name: tool.name.to_string(),
        arguments: arguments.to_string(),
    })
}

/// The structured answer for a JSON schema (`None`: no schema given, an empty object).
pub(crate) fn schema_answer(schema: Option<&Value>) -> Answer {
    Answer::Json(match schema {
        Some(schema) => minimal_instance(schema).to_string(),
        None => "{}".to_string(),
    })
}

/// The top-level fields of a body beyond `model` and `messages`.
pub(crate) fn extra_fields(body: &Map<String, Value>) -> Vec<String> {
    body.keys()
        .filter(|k| *k != "model" && *k != "messages")
        .cloned()
        .collect()
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

/// Accumulates message texts into the last-user text, the system prompt and the prompt word
/// count.
#[derive(Default)]
pub(crate) struct TextTally {
    pub prompt_tokens: u64,
    pub last_user_text: Option<String>,
    pub system: Option<String>,
    pub system_tokens: u64,
}

impl TextTally {
    /// Adds one message's text; `is_user` marks it as the latest user message so far.
    pub(crate) fn add(&mut self, text: String, is_user: bool) {
        self.prompt_tokens += super::reply::count_words(&text) as u64;
        if is_user {
            self.last_user_text = Some(text);
        }
    }

    /// Adds a system prompt's text (several are joined by a blank line).
    pub(crate) fn add_system(&mut self, text: String) {
        let words = super::reply::count_words(&text) as u64;
        self.prompt_tokens += words;
        self.system_tokens += words;
        match &mut self.system {
            Some(system) => {
                system.push_str("\n\n");
                system.push_str(&text);
            }
            None => self.system = Some(text),
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
    /// Words of the reply, plus `reasoning_tokens`.
    pub completion_tokens: u64,
    /// The tool call answered instead of text: (id, name, arguments JSON).
    pub tool_call: Option<(String, String, String)>,
    /// Reasoning models: as many as the reply's words (see `mock/mod.rs`).
    pub reasoning_tokens: u64,
    /// Prompt tokens read from the cache: the system prompt's, when it was seen before.
    pub cached_tokens: u64,
    /// Anthropic: prompt tokens written to the cache (a system prompt seen the first time).
    pub cache_write_tokens: u64,
}
