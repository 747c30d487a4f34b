//! The native half of the Batch API engine: the request body of each row, as the live executor
//! would send it, and the rows' results from the provider's batch answers, as the live
//! executor would record them. Same builder (`provider::prepare_row`), same hash
//! (`provider::request_hash`), same parsing and classification (`provider::parse_response`,
//! `classify_status`, `error_message`), same result rows (`RowResult::set_completion`).

use crate::config::RunConfig;
use crate::error::{Error, ErrorType, Result};
use crate::provider::{self, RowPayload, Target};
use crate::row::RowResult;
use crate::transport::redact_for;

/// One request's answer from a batch, as the engine read it from the provider's results.
#[derive(Debug, Clone, Default)]
pub struct BatchAnswer {
    pub row: u64,
    pub request_hash: String,
    /// The answer's HTTP status (none for an expired or cancelled request).
    pub http_status: Option<u16>,
    /// The answer's JSON body (a Chat Completions or Messages answer, or an error body).
    pub body: Option<String>,
    /// An [`ErrorType::as_str`] name when the batch itself says why there is no answer
    /// (`expired`, `cancelled`, ...); wins over the status and body.
    pub error_type: Option<String>,
    pub error: Option<String>,
    pub started_at_us: i64,
    pub finished_at_us: i64,
}

/// A run's config for the Batch API: the executor's, refused with `stream: true` (a batch
/// request is never streamed).
pub fn config(config_json: &str) -> Result<RunConfig> {
    let config = RunConfig::from_json(config_json)?;
    if config.params.stream {
        return Err(Error::Config(
            "stream: a Batch API request cannot be streamed".into(),
        ));
    }
    Ok(config)
}

/// Each payload's request body (JSON text) and its request hash, as the live executor builds
/// and hashes them. A payload that is not valid fails the call, naming its index.
pub fn requests(config: &RunConfig, payloads: Vec<String>) -> Result<Vec<(String, String)>> {
    let target = config.target();
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let payload = RowPayload::from_json(payload)
                .map_err(|e| Error::Config(format!("payload {i}: messages are not valid: {e}")))?;
            let request = provider::prepare_row(
                config.provider,
                &target,
                &config.params,
                &payload.messages,
                payload.params.as_ref(),
            );
            let hash = provider::request_hash(&request.body);
            let body = String::from_utf8(request.body.to_vec())
                .map_err(|e| Error::Config(format!("payload {i}: body is not UTF-8: {e}")))?;
            Ok((body, hash))
        })
        .collect()
}

/// The result row of each answer, in order (see [`result`]).
pub fn results(config: &RunConfig, answers: Vec<BatchAnswer>) -> Result<Vec<RowResult>> {
    let target = config.target();
    answers
        .into_iter()
        .map(|answer| result(config, &target, answer))
        .collect()
}

/// One answer's result row: an error row of the given `error_type`; else a 2xx body parsed as
/// a live answer (`invalid_response` when it does not parse); else a non-2xx classified as a
/// live error. One attempt; the latency is the time between the answer's two stamps.
fn result(config: &RunConfig, target: &Target, answer: BatchAnswer) -> Result<RowResult> {
    let kind = config.provider;
    let redact = |message: &str| config.api_key.redact(&redact_for(target, message));
    let mut row = RowResult {
        row: answer.row,
        latency_ms: (answer.finished_at_us - answer.started_at_us).max(0) as f64 / 1000.0,
        ttft_ms: None,
        attempts: 1,
        started_at_us: answer.started_at_us,
        finished_at_us: answer.finished_at_us,
        request_hash: answer.request_hash,
        ..RowResult::default()
    };
    let body = answer.body.unwrap_or_default();
    if let Some(name) = answer.error_type {
        let error_type = ErrorType::from_name(&name).ok_or_else(|| {
            Error::Config(format!("row {}: unknown error type {name:?}", answer.row))
        })?;
        let message = answer.error.unwrap_or_default();
        row.set_error(error_type, answer.http_status, redact(&message));
        return Ok(row);
    }
    let Some(status) = answer.http_status else {
        return Err(Error::Config(format!(
            "row {}: neither an HTTP status nor an error type",
            answer.row
        )));
    };
    if (200..300).contains(&status) {
        match provider::parse_response(kind, body.as_bytes()) {
            Ok(mut completion) => {
                if config.keep_raw {
                    completion.raw = Some(body);
                }
                row.set_completion(completion, status);
            }
            Err(message) => {
                row.set_error(ErrorType::InvalidResponse, Some(status), redact(&message))
            }
        }
    } else {
        let error_type = provider::classify_status(kind, status, body.as_bytes());
        let message = format!(
            "HTTP {status}: {}",
            provider::error_message(kind, body.as_bytes())
        );
        row.set_error(error_type, Some(status), redact(&message));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn run(provider: &str, extra: Value) -> Result<RunConfig> {
        let mut value = json!({"provider": provider, "api_base": "http://h/v1",
            "api_key": "sk-secret-key-123456", "model": "gpt-4o-mini"});
        for (key, v) in extra.as_object().unwrap() {
            value[key] = v.clone();
        }
        config(&value.to_string())
    }

    fn answer(row: u64, status: Option<u16>, body: &str) -> BatchAnswer {
        BatchAnswer {
            row,
            request_hash: format!("h{row}"),
            http_status: status,
            body: Some(body.to_string()),
            started_at_us: 1_000_000,
            finished_at_us: 3_500_000,
            ..BatchAnswer::default()
        }
    }

    #[test]
    fn openai_bodies_are_the_live_builders_with_the_same_hash() {
        let c = run(
            "openai",
            json!({"temperature": 0.2, "system": "Be brief.", "params": {"seed": 3}}),
        )
        .unwrap();
        let payloads = vec![
            r#"[{"role":"user","content":"hi"}]"#.to_string(),
            r#"{"messages":[{"role":"user","content":"x"}],"params":{"model":"o4-mini","seed":9}}"#
                .to_string(),
        ];
        let out = requests(&c, payloads.clone()).unwrap();
        assert_eq!(out.len(), 2);
        let target = c.target();
        for ((body, hash), payload) in out.iter().zip(payloads) {
            let payload = RowPayload::from_json(payload).unwrap();
            let live = provider::prepare_row(
                c.provider,
                &target,
                &c.params,
                &payload.messages,
                payload.params.as_ref(),
            );
            assert_eq!(body.as_bytes(), &live.body[..]);
            assert_eq!(hash, &provider::request_hash(&live.body));
        }
        let first: Value = serde_json::from_str(&out[0].0).unwrap();
        assert_eq!(first["model"], "gpt-4o-mini");
        assert_eq!(first["messages"][0]["role"], "system");
        assert_eq!(first["seed"], 3);
        // As live: `stream` false, never true.
        assert_eq!(first["stream"], json!(false));
        let second: Value = serde_json::from_str(&out[1].0).unwrap();
        assert_eq!(second["model"], "o4-mini");
        assert_eq!(second["seed"], 9);
        assert_ne!(out[0].1, out[1].1);
    }

    #[test]
    fn anthropic_bodies_move_the_system_and_default_max_tokens() {
        let c = run("anthropic", json!({"model": "claude-x"})).unwrap();
        let out = requests(
            &c,
            vec![r#"[{"role":"system","content":"S"},{"role":"user","content":"hi"}]"#.into()],
        )
        .unwrap();
        let body: Value = serde_json::from_str(&out[0].0).unwrap();
        assert_eq!(body["system"], "S");
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
        assert_eq!(body["max_tokens"], provider::DEFAULT_MAX_TOKENS);
        assert_ne!(body.get("stream"), Some(&json!(true)));
    }

    #[test]
    fn stream_and_bad_payloads_are_refused() {
        let err = run("openai", json!({"stream": true}))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("stream"), "{err}");
        let c = run("openai", json!({})).unwrap();
        let err = requests(
            &c,
            vec![r#"[{"role":"user","content":"ok"}]"#.into(), "nope".into()],
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.starts_with("payload 1:")),
            "{err}"
        );
        let err = requests(
            &c,
            vec![r#"{"messages":[],"params":{"stream":true}}"#.into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("payload 0"), "{err}");
    }

    #[test]
    fn openai_answers_become_the_live_rows() {
        let c = run("openai", json!({"keep_raw": true})).unwrap();
        let ok = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Echo: hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let bad = r#"{"error":{"message":"Bad marker sk-secret-key-123456","type":"invalid_request_error","param":null,"code":null}}"#;
        let expired = BatchAnswer {
            row: 7,
            error_type: Some("expired".into()),
            error: Some(
                "This request could not be executed before the completion window expired.".into(),
            ),
            ..answer(7, None, "")
        };
        let rows = results(
            &c,
            vec![
                answer(0, Some(200), ok),
                answer(1, Some(400), bad),
                expired,
                answer(3, Some(200), "{not json"),
                answer(
                    4,
                    Some(500),
                    r#"{"error":{"message":"boom","type":"server_error"}}"#,
                ),
            ],
        )
        .unwrap();
        let r = &rows[0];
        assert!(r.ok);
        assert_eq!(r.output.as_deref(), Some("Echo: hi"));
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!((r.prompt_tokens, r.completion_tokens), (Some(3), Some(2)));
        assert_eq!(r.raw.as_deref(), Some(ok));
        assert_eq!(r.http_status, Some(200));
        assert_eq!((r.attempts, r.latency_ms, r.ttft_ms), (1, 2500.0, None));
        assert_eq!(r.request_hash, "h0");
        let r = &rows[1];
        assert!(!r.ok);
        assert_eq!(r.error_type, Some(ErrorType::BadRequest));
        assert_eq!(r.http_status, Some(400));
        let message = r.error.as_deref().unwrap();
        assert!(
            message.starts_with("HTTP 400: invalid_request_error: Bad marker"),
            "{message}"
        );
        assert!(!message.contains("secret-key"), "{message}");
        let r = &rows[2];
        assert_eq!((r.row, r.error_type), (7, Some(ErrorType::Expired)));
        assert_eq!(r.http_status, None);
        assert!(r.error.as_deref().unwrap().contains("completion window"));
        assert_eq!(rows[3].error_type, Some(ErrorType::InvalidResponse));
        assert_eq!(rows[3].http_status, Some(200));
        assert_eq!(rows[4].error_type, Some(ErrorType::ServerError));
        // Without keep_raw, no raw.
        let c = run("openai", json!({})).unwrap();
        let rows = results(&c, vec![answer(0, Some(200), ok)]).unwrap();
        assert_eq!(rows[0].raw, None);
    }

    #[test]
    fn anthropic_answers_and_refused_items() {
        let c = run("anthropic", json!({})).unwrap();
        let ok = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Echo: hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":2}}"#;
        let bad = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        let over = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let rows = results(
            &c,
            vec![
                answer(0, Some(200), ok),
                answer(1, Some(400), bad),
                answer(2, Some(529), over),
            ],
        )
        .unwrap();
        assert!(rows[0].ok);
        assert_eq!(rows[0].output.as_deref(), Some("Echo: hi"));
        assert_eq!(rows[0].finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(rows[0].prompt_tokens, Some(4));
        assert_eq!(rows[1].error_type, Some(ErrorType::BadRequest));
        assert_eq!(
            rows[1].error.as_deref(),
            Some("HTTP 400: invalid_request_error: max_tokens: Field required")
        );
        assert_eq!(rows[2].error_type, Some(ErrorType::Overloaded));
        let unknown = BatchAnswer {
            error_type: Some("gone".into()),
            ..answer(5, None, "")
        };
        let err = results(&c, vec![unknown]).unwrap_err().to_string();
        assert!(err.contains("unknown error type \"gone\""), "{err}");
        assert!(results(&c, vec![answer(6, None, "")]).is_err());
    }
}
