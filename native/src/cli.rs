//! The `model-client-rs` command: arguments, the request file, live output and exit codes.
//!
//! `model-client-rs --request-file request.json [--stream] [--json] [--log-level L]
//! [--log-format text|json]`. Exit codes: 0 answered, 1 the request failed, 2 bad usage or a bad
//! request file (nothing was sent). Logs go to stderr; stdout carries only the answer.

use crate::client::{key_env, ClientConfig, ClientSettings, ModelClient, Response};
use crate::provider::{Message, ProviderKind};
use crate::runtime::runtime;
use serde::Deserialize;
use std::io::Write;

/// Exit code: the request was answered.
pub const EXIT_OK: i32 = 0;
/// Exit code: the request failed (after retries).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad arguments or request file; nothing was sent.
pub const EXIT_USAGE: i32 = 2;

const USAGE: &str = "usage: model-client-rs --request-file FILE [--stream] [--json] \
[--log-level LEVEL] [--log-format text|json]";

/// Parsed command-line options.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    pub request_file: String,
    pub stream: bool,
    pub json: bool,
    pub log_level: Option<String>,
    pub log_json: bool,
}

/// The request file: what to send, to which provider and model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    messages: Vec<FileMessage>,
    provider: ProviderKind,
    model: String,
    #[serde(default)]
    parameters: Parameters,
    #[serde(default)]
    api_base: Option<String>,
    /// Azure's `api-version` (else `OPENAI_API_VERSION`).
    #[serde(default)]
    api_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMessage {
    role: String,
    content: serde_json::Value,
    /// Only `text` is supported; the content is then a string or a list of content parts.
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Parameters {
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    max_retries: Option<u32>,
    /// Seconds per attempt.
    timeout: Option<f64>,
}

/// Parses arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::default();
    let mut file = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &str| {
            inline
                .clone()
                .or_else(|| iter.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match name {
            "--request-file" => file = Some(value("--request-file")?),
            "--stream" => opts.stream = true,
            "--json" => opts.json = true,
            "--log-level" => opts.log_level = Some(value("--log-level")?),
            "--log-format" => match value("--log-format")?.as_str() {
                "json" => opts.log_json = true,
                "text" => opts.log_json = false,
                other => {
                    return Err(format!(
                        "--log-format: expected text or json, got {other:?}"
                    ))
                }
            },
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    opts.request_file = file.ok_or("--request-file is required")?;
    Ok(opts)
}

/// Runs the command with the process's stdout, stderr and environment; returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return EXIT_OK;
    }
    let stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    run_with(
        &args,
        |name| std::env::var(name).ok(),
        &mut stdout.lock(),
        &mut stderr,
    )
}

/// [`run`] with the environment and both streams given, for tests.
pub fn run_with(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let opts = match parse_args(args) {
        Ok(opts) => opts,
        Err(message) => {
            let _ = writeln!(err, "error: {message}\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    let level = opts.log_level.clone().or_else(|| env("RUST_LOG"));
    if let Some(level) = level.or_else(|| opts.log_json.then(|| "info".to_string())) {
        if let Err(e) = crate::logging::init(&level, opts.log_json) {
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    }
    let (config, messages) = match load(&opts, &env) {
        Ok(loaded) => loaded,
        Err(message) => {
            let _ = writeln!(err, "error: {}: {message}", opts.request_file);
            return EXIT_USAGE;
        }
    };
    if config.api_key.is_empty() {
        let _ = writeln!(err, "error: {} is not set", key_env(config.provider));
        return EXIT_USAGE;
    }
    let client = match ModelClient::new(1) {
        Ok(client) => client,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILED;
        }
    };
    let print_live = opts.stream && !opts.json;
    let result = runtime().block_on(client.send(&config, &messages, |piece| {
        if print_live {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
    }));
    match result {
        Ok(response) => {
            let _ = if opts.json {
                writeln!(out, "{}", response_json(&config, &response))
            } else if print_live {
                writeln!(out)
            } else {
                writeln!(out, "{}", response.completion.text)
            };
            let _ = out.flush();
            EXIT_OK
        }
        Err(failure) => {
            if print_live {
                let _ = writeln!(out);
            }
            let line = config.api_key.redact(&failure.to_string());
            let _ = writeln!(err, "error: {}", line.replace('\n', " "));
            EXIT_FAILED
        }
    }
}

/// Reads and checks the request file; `Err` is one line saying what is wrong in it.
fn load(
    opts: &Options,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(ClientConfig, Vec<Message>), String> {
    let text =
        std::fs::read_to_string(&opts.request_file).map_err(|e| format!("cannot read: {e}"))?;
    let file: RequestFile =
        serde_json::from_str(&text).map_err(|e| format!("invalid request: {e}"))?;
    if file.messages.is_empty() {
        return Err("messages: must not be empty".into());
    }
    let mut messages = Vec::with_capacity(file.messages.len());
    for (i, message) in file.messages.into_iter().enumerate() {
        match message.kind.as_deref() {
            None | Some("text") => {}
            Some(other) => {
                return Err(format!(
                    "messages[{i}].kind: only \"text\" is supported, got {other:?}"
                ))
            }
        }
        messages.push(Message {
            role: message.role,
            content: message.content,
        });
    }
    let p = file.parameters;
    let settings = ClientSettings {
        provider: file.provider,
        model: file.model,
        api_key: None,
        api_base: file.api_base,
        temperature: p.temperature,
        max_tokens: p.max_tokens,
        stream: opts.stream,
        api_version: file.api_version,
        max_retries: p.max_retries.unwrap_or(2),
        timeout: p.timeout.unwrap_or(60.0),
    };
    let config = ClientConfig::resolve(settings, env).map_err(|e| e.to_string())?;
    Ok((config, messages))
}

/// The `--json` answer: text, finish reason, refusal, tool calls (a JSON array, OpenAI's shape),
/// usage (the whole prompt and reply) and its details, and timings.
fn response_json(config: &ClientConfig, response: &Response) -> serde_json::Value {
    let c = &response.completion;
    let tool_calls = c
        .tool_calls
        .as_deref()
        .and_then(|calls| serde_json::from_str::<serde_json::Value>(calls).ok());
    serde_json::json!({
        "text": c.text,
        "finish_reason": c.finish_reason,
        "refusal": c.refusal,
        "tool_calls": tool_calls,
        "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
        // Parts of the usage above (null when the provider did not report them).
        "usage_details": {
            "reasoning_tokens": c.reasoning_tokens,
            "cached_prompt_tokens": c.cached_prompt_tokens,
            "cache_write_tokens": c.cache_write_tokens,
        },
        "model": config.params.model,
        "latency_ms": response.latency.as_secs_f64() * 1000.0,
        "ttft_ms": response.ttft.map(|d| d.as_secs_f64() * 1000.0),
        "attempts": response.attempts,
        "http_status": response.http_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockConfig, MockServer};

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_refuses_unknown_ones() {
        let opts = parse_args(&args(&[
            "--request-file",
            "r.json",
            "--stream",
            "--log-format=json",
        ]))
        .expect("ok");
        assert_eq!(
            (opts.request_file.as_str(), opts.stream, opts.log_json),
            ("r.json", true, true)
        );
        assert!(parse_args(&args(&["--stream"])).is_err());
        assert!(parse_args(&args(&["--request-file", "r", "--fast"])).is_err());
        assert!(parse_args(&args(&["--request-file"])).is_err());
    }

    fn call(
        request: serde_json::Value,
        extra: &[&str],
        key: Option<&str>,
    ) -> (i32, String, String) {
        let dir = std::env::temp_dir().join(format!("mcr-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("request.json");
        std::fs::write(&path, request.to_string()).expect("write");
        let mut list = vec!["--request-file".to_string(), path.display().to_string()];
        list.extend(extra.iter().map(|s| s.to_string()));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let key = key.map(str::to_string);
        let code = run_with(
            &list,
            |name| name.ends_with("_API_KEY").then(|| key.clone()).flatten(),
            &mut out,
            &mut err,
        );
        let _ = std::fs::remove_dir_all(&dir);
        (
            code,
            String::from_utf8_lossy(&out).into(),
            String::from_utf8_lossy(&err).into(),
        )
    }

    #[test]
    fn answers_streams_and_reports_failures() {
        let server = MockServer::start(MockConfig::default(), "127.0.0.1:0".parse().expect("addr"))
            .expect("mock");
        let request = |provider: &str, text: &str| {
            let base = match provider {
                "openai" => format!("http://{}/v1", server.local_addr()),
                _ => format!("http://{}", server.local_addr()),
            };
            serde_json::json!({
                "messages": [{"role": "user", "content": text, "kind": "text"}],
                "provider": provider, "model": "m", "api_base": base,
                "parameters": {"temperature": 0.5, "max_tokens": 50},
            })
        };
        let (code, out, _) = call(request("openai", "hello there"), &[], Some("mock-key"));
        assert_eq!((code, out.as_str()), (0, "Echo: hello there\n"));
        let (code, out, _) = call(
            request("anthropic", "hello there"),
            &["--stream"],
            Some("mock-key"),
        );
        assert_eq!((code, out.as_str()), (0, "Echo: hello there\n"));
        let (code, out, _) = call(request("anthropic", "hi"), &["--json"], Some("mock-key"));
        let value: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!((code, value["text"].as_str()), (0, Some("Echo: hi")));
        assert_eq!(value["usage"]["completion_tokens"], 2);
        assert!(value["usage_details"].is_object() && value["tool_calls"].is_null());

        let (code, _, err) = call(
            request("openai", "hi"),
            &[],
            Some("sk-wrong-0123456789abcdef"),
        );
        assert_eq!(code, 1);
        assert!(
            err.starts_with("error: auth: HTTP 401") && !err.contains("0123456789"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
        let (code, _, err) = call(request("openai", "hi"), &[], None);
        assert_eq!(
            (code, err.as_str()),
            (2, "error: OPENAI_API_KEY is not set\n")
        );
        let mut bad = request("openai", "hi");
        bad["parameters"]["top_k"] = 3.into();
        let (code, _, err) = call(bad, &[], Some("mock-key"));
        assert!(
            code == 2 && err.contains("request.json") && err.contains("top_k"),
            "{err}"
        );
    }

    #[test]
    fn a_stream_answered_with_json_prints_its_text() {
        let config: MockConfig =
            serde_json::from_value(serde_json::json!({"stream_as_json": true})).expect("config");
        let server = MockServer::start(config, "127.0.0.1:0".parse().expect("addr")).expect("mock");
        let request = serde_json::json!({
            "messages": [{"role": "user", "content": "whole answer"}],
            "provider": "openai", "model": "m",
            "api_base": format!("http://{}/v1", server.local_addr()),
        });
        let (code, out, err) = call(request, &["--stream"], Some("mock-key"));
        assert_eq!((code, out.as_str()), (0, "Echo: whole answer\n"), "{err}");
    }
}
