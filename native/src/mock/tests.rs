//! End-to-end tests of the mock server over real HTTP, with reqwest as the client.

use super::{MockConfig, MockServer};
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

fn start(config: MockConfig) -> MockServer {
    MockServer::start(config, "127.0.0.1:0".parse().expect("addr")).expect("start mock")
}

fn client() -> reqwest::Client {
    crate::runtime::install_crypto_provider();
    reqwest::Client::new()
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    /// Body bytes received before the end or an error.
    text: String,
    /// Whether reading the body failed (a cut connection).
    body_error: bool,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).expect("json body")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(srv: &MockServer, path: &str, key: &str, body: &str) -> reqwest::Result<Reply> {
    let mut req = client()
        .post(format!("http://{}{path}", srv.local_addr()))
        .header("content-type", "application/json")
        .body(body.to_string());
    req = if path == "/v1/messages" {
        req.header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
    } else {
        req.header("authorization", format!("Bearer {key}"))
    };
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut stream = resp.bytes_stream();
    let mut bytes = Vec::new();
    let mut body_error = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => bytes.extend_from_slice(&c),
            Err(_) => {
                body_error = true;
                break;
            }
        }
    }
    Ok(Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        body_error,
    })
}

async fn openai(srv: &MockServer, body: Value) -> Reply {
    send(srv, "/v1/chat/completions", "mock-key", &body.to_string())
        .await
        .expect("request")
}

async fn anthropic(srv: &MockServer, body: Value) -> Reply {
    send(srv, "/v1/messages", "mock-key", &body.to_string())
        .await
        .expect("request")
}

fn oa_body(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text}]})
}

fn an_body(text: &str) -> Value {
    json!({"model": "claude-x", "max_tokens": 100, "system": "be brief",
        "messages": [{"role": "user", "content": text}]})
}

/// SSE frames as (event name, data) pairs.
fn frames(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let mut event = String::new();
            let mut data = String::new();
            for line in f.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_string();
                }
            }
            (event, data)
        })
        .collect()
}

#[tokio::test]
async fn openai_plain_body_is_exact() {
    let srv = start(MockConfig::default());
    let r = openai(&srv, oa_body("hello  world")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    assert!(r.header("x-request-id").starts_with("req_"));
    let mut v = r.json();
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    v["id"] = json!("X");
    v["created"] = json!(0);
    assert_eq!(
        v,
        json!({"id": "X", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0,
                "message": {"role": "assistant", "content": "Echo: hello  world", "refusal": null},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})
    );
}

#[tokio::test]
async fn openai_truncates_at_max_tokens() {
    let srv = start(MockConfig::default());
    let mut body = oa_body("one two three");
    body["max_completion_tokens"] = json!(2);
    let v = openai(&srv, body).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: one");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    // Text parts are concatenated; the last user message wins.
    let body = json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": null},
        {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}]});
    let v = openai(&srv, body).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: a b");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn openai_stream_sequence() {
    let srv = start(MockConfig::default());
    let mut body = oa_body("hello big world");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = openai(&srv, body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "text/event-stream; charset=utf-8");
    let frames = frames(&r.text);
    let (last, rest) = frames.split_last().unwrap();
    assert_eq!(last.1, "[DONE]");
    let chunks: Vec<Value> = rest
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["usage"], Value::Null);
    let pieces: Vec<&str> = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(pieces, ["Echo:", " hello", " big", " world"]);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})
    );
    assert_eq!(chunks.len(), 7);
    assert_eq!(srv.stats().streamed, 1);
}

#[tokio::test]
async fn anthropic_plain_body_is_exact() {
    let srv = start(MockConfig::default());
    let mut body = an_body("hi there you");
    body["max_tokens"] = json!(3);
    body["system"] = json!([{"type": "text", "text": "sys prompt"}]);
    let r = anthropic(&srv, body).await;
    assert_eq!(r.status, 200);
    assert!(r.header("request-id").starts_with("req_"));
    let mut v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    v["id"] = json!("X");
    assert_eq!(
        v,
        json!({"id": "X", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Echo: hi there"}],
            "stop_reason": "max_tokens", "stop_sequence": null,
            // The system prompt's first answer writes it to the cache.
            "usage": {"input_tokens": 3, "cache_creation_input_tokens": 2,
                "cache_read_input_tokens": 0, "output_tokens": 3}})
    );
}

#[tokio::test]
async fn anthropic_stream_sequence() {
    let srv = start(MockConfig::default());
    let mut body = an_body("hello world");
    body["stream"] = json!(true);
    let r = anthropic(&srv, body).await;
    assert_eq!(r.status, 200);
    let frames = frames(&r.text);
    let names: Vec<&str> = frames.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data: Vec<Value> = frames
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for (name, d) in names.iter().zip(&data) {
        assert_eq!(d["type"], *name);
    }
    assert_eq!(data[0]["message"]["usage"]["input_tokens"], 2);
    assert_eq!(
        data[0]["message"]["usage"]["cache_creation_input_tokens"],
        2
    );
    let text: String = data[3..6]
        .iter()
        .map(|d| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Echo: hello world");
    assert_eq!(data[3]["delta"]["type"], "text_delta");
    assert_eq!(data[7]["delta"]["stop_reason"], "end_turn");
    assert_eq!(data[7]["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn wrong_keys_get_401_and_the_key_is_echoed() {
    let srv = start(MockConfig::default());
    let r = send(
        &srv,
        "/v1/chat/completions",
        "sk-WRONG",
        &oa_body("x").to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "Incorrect API key provided: sk-WRONG. You can find your API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
    );
    let r = send(&srv, "/v1/messages", "nope", &an_body("x").to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    );
    let r = client()
        .post(format!("http://{}/v1/messages", srv.local_addr()))
        .header("x-api-key", "mock-key")
        .body(an_body("x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(srv.stats().by_status["401"], 2);
}

#[tokio::test]
async fn invalid_bodies_get_400() {
    let srv = start(MockConfig::default());
    let openai_cases = [
        (
            json!({"model": "m"}),
            "Missing required parameter: 'messages'.",
        ),
        (
            json!({"model": "m", "messages": []}),
            "Invalid 'messages': empty array.",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "you must provide a model parameter",
        ),
        (
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
            "Invalid value: 'robot'.",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user"}]}),
            "Missing required parameter: 'messages[0].content'.",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": 3}]}),
            "Invalid type for 'messages[0].content'",
        ),
        (
            json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
            "Invalid 'max_tokens'",
        ),
    ];
    for (body, message) in openai_cases {
        let r = openai(&srv, body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        let v = r.json();
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(message),
            "{v}"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let r = send(&srv, "/v1/chat/completions", "mock-key", "{not json")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let anthropic_cases = [
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": []}),
            "messages: at least one message is required",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}),
            "messages.0.content.0: Input tag 'bogus'",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "system": 7, "messages": [{"role": "user", "content": "x"}]}),
            "system: Input should be a valid list",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            "model: Field required",
        ),
    ];
    for (body, message) in anthropic_cases {
        let r = anthropic(&srv, body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        let v = r.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(message),
            "{v}"
        );
    }
}

#[tokio::test]
async fn bad_marker_is_a_permanent_400() {
    let srv = start(MockConfig::default());
    for _ in 0..2 {
        assert_eq!(openai(&srv, oa_body("x [[bad]] y")).await.status, 400);
        assert_eq!(anthropic(&srv, an_body("[[bad]]")).await.status, 400);
    }
    assert_eq!(srv.stats().by_status["400"], 4);
}

#[tokio::test]
async fn quota_exhausted() {
    let srv = start(MockConfig {
        quota_exhausted: true,
        ..MockConfig::default()
    });
    let r = openai(&srv, oa_body("x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    let r = anthropic(&srv, an_body("x")).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("credit balance is too low"));
}

#[tokio::test]
async fn rate_limit_429s_carry_headers() {
    let srv = start(MockConfig {
        rate_limit_rps: Some(2),
        ..MockConfig::default()
    });
    let ok = openai(&srv, oa_body("x")).await;
    assert_eq!(ok.status, 200);
    // 2 per second stated per minute: a limit of 120, one token left = 60 per minute.
    assert_eq!(ok.header("x-ratelimit-limit-requests"), "120");
    assert_eq!(ok.header("x-ratelimit-remaining-requests"), "60");
    assert!(ok.header("x-ratelimit-reset-requests").ends_with("ms"));
    let second = openai(&srv, oa_body("x")).await;
    assert_eq!(second.status, 200);
    // Less than a token left: the next request would be refused, so remaining says 0.
    assert_eq!(second.header("x-ratelimit-remaining-requests"), "0");
    let r = openai(&srv, oa_body("x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with("Rate limit reached for requests per min (RPM): Limit 120, Used 120"),
        "{message}"
    );
    assert_eq!(r.header("retry-after"), "1");
    let ms: u64 = r.header("retry-after-ms").parse().unwrap();
    assert!((1..=500).contains(&ms), "{ms}");
    assert_eq!(r.header("x-ratelimit-limit-requests"), "120");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), "0");
    let r = anthropic(&srv, an_body("x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("retry-after-ms"), "");
    assert_eq!(r.header("anthropic-ratelimit-requests-limit"), "120");
    assert_eq!(r.header("anthropic-ratelimit-requests-remaining"), "0");
    let reset = r.header("anthropic-ratelimit-requests-reset");
    assert!(humantime::parse_rfc3339(reset).is_ok(), "{reset}");
    // After the advertised wait a token is free again.
    tokio::time::sleep(std::time::Duration::from_millis(ms + 20)).await;
    assert_eq!(openai(&srv, oa_body("x")).await.status, 200);
    assert_eq!(srv.stats().by_status["429"], 2);
}

#[tokio::test]
async fn remaining_is_the_buckets_room_scaled_to_a_minute() {
    let srv = start(MockConfig {
        rate_limit_rps: Some(10),
        ..MockConfig::default()
    });
    let remaining = |r: &Reply, name: &str| -> u32 { r.header(name).parse().unwrap() };
    // Full bucket of 10: one taken leaves exactly 9 = 540 per minute.
    let r = openai(&srv, oa_body("x")).await;
    assert_eq!(r.header("x-ratelimit-limit-requests"), "600");
    assert_eq!(remaining(&r, "x-ratelimit-remaining-requests"), 540);
    // The next leaves 8 plus what refilled meanwhile (10/s): fractional room shows.
    let r = anthropic(&srv, an_body("x")).await;
    assert_eq!(r.header("anthropic-ratelimit-requests-limit"), "600");
    let left = remaining(&r, "anthropic-ratelimit-requests-remaining");
    assert!((480..540).contains(&left), "{left}");
    let reset = humantime::parse_rfc3339(r.header("anthropic-ratelimit-requests-reset")).unwrap();
    // Full again within a second (the header has whole seconds, so allow for the rounding).
    let ahead = reset
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(ahead <= std::time::Duration::from_secs(1), "{ahead:?}");
}

fn has_rate_limit_headers(r: &Reply) -> bool {
    r.headers.keys().any(|name| {
        name.as_str().starts_with("x-ratelimit-")
            || name.as_str().starts_with("anthropic-ratelimit-")
    })
}

/// A 429 that states no limit: `retry-after: 1` only, no `retry-after-ms`, no rate-limit headers.
fn assert_states_only_retry_after(r: &Reply) {
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), "1");
    assert!(r.headers.get("retry-after-ms").is_none(), "{:?}", r.headers);
    assert!(!has_rate_limit_headers(r), "{:?}", r.headers);
}

#[tokio::test]
async fn without_rate_limit_headers_only_retry_after_is_stated() {
    let srv = start(MockConfig {
        rate_limit_rps: Some(1),
        rate_limit_headers: false,
        ..MockConfig::default()
    });
    let ok = openai(&srv, oa_body("x")).await;
    assert_eq!(ok.status, 200);
    assert!(!has_rate_limit_headers(&ok), "{:?}", ok.headers);
    assert!(ok.header("x-request-id").starts_with("req_"));
    for r in [
        openai(&srv, oa_body("x")).await,
        anthropic(&srv, an_body("x")).await,
    ] {
        assert_states_only_retry_after(&r);
    }
    // An injected 429 states only `retry-after: 1` too.
    let srv = start(MockConfig {
        rate_limit_headers: false,
        fault_rate: 1.0,
        faults: vec!["429".into()],
        ..MockConfig::default()
    });
    for r in [
        openai(&srv, oa_body("x")).await,
        anthropic(&srv, an_body("x")).await,
    ] {
        assert_states_only_retry_after(&r);
    }
}

#[tokio::test]
async fn rate_limit_schedule_changes_the_rate_at_the_boundary() {
    use std::time::{Duration, Instant};
    let srv = start(MockConfig {
        rate_limit_schedule: vec![(0.0, 50), (0.3, 5)],
        ..MockConfig::default()
    });
    // The clock starts at the first API request, not at start-up.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(openai(&srv, oa_body("x")).await.status, 200);
    // Time 0 of the schedule is at most now.
    let t0 = Instant::now();
    for _ in 0..5 {
        let r = openai(&srv, oa_body("x")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit-requests"), "3000");
    }
    tokio::time::sleep_until((t0 + Duration::from_millis(350)).into()).await;
    // 5 per second now: the tokens are clamped to the new capacity of 5.
    for _ in 0..5 {
        let r = openai(&srv, oa_body("x")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit-requests"), "300");
    }
    let r = anthropic(&srv, an_body("x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("anthropic-ratelimit-requests-limit"), "300");
    assert_eq!(r.header("anthropic-ratelimit-requests-remaining"), "0");
    let ms: u64 = openai(&srv, oa_body("x"))
        .await
        .header("retry-after-ms")
        .parse()
        .unwrap();
    // A token every 200 ms at the new rate.
    assert!((1..=200).contains(&ms), "{ms}");
    assert_eq!(srv.stats().by_status["429"], 2);
}

#[tokio::test]
async fn overload_episodes_refuse_as_the_providers_do() {
    use std::time::{Duration, Instant};
    let srv = start(MockConfig {
        rate_limit_rps: Some(1),
        overload: vec![(0.0, 0.5)],
        ..MockConfig::default()
    });
    let r = openai(&srv, oa_body("x")).await;
    // Time 0 of the episodes is at most now.
    let t0 = Instant::now();
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "The server is overloaded or not ready yet.",
            "type": "server_error", "param": null, "code": null}})
    );
    assert!(r.headers.get("retry-after").is_none(), "{:?}", r.headers);
    assert!(!has_rate_limit_headers(&r));
    let mut body = an_body("x");
    body["stream"] = json!(true);
    for body in [an_body("x"), body] {
        let r = anthropic(&srv, body).await;
        assert_eq!(r.status, 529);
        assert_eq!(
            r.json(),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        assert!(r.headers.get("retry-after").is_none(), "{:?}", r.headers);
        assert!(!has_rate_limit_headers(&r));
    }
    // Validation still comes first.
    assert_eq!(openai(&srv, json!({"model": "m"})).await.status, 400);
    tokio::time::sleep_until((t0 + Duration::from_millis(550)).into()).await;
    // The episode is over, and the refused requests spent no token: the bucket's only token is
    // still there (a spent one would be back only a second after it was spent).
    let r = openai(&srv, oa_body("x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-requests"), "60");
    assert_eq!(openai(&srv, oa_body("x")).await.status, 429);
    let stats = srv.stats();
    assert_eq!(stats.by_status["503"], 1);
    assert_eq!(stats.by_status["529"], 2);
    assert_eq!(stats.by_status["200"], 1);

    // An episode later on: before and after it the server answers.
    let srv = start(MockConfig {
        overload: vec![(0.3, 0.3)],
        ..MockConfig::default()
    });
    assert_eq!(anthropic(&srv, an_body("x")).await.status, 200);
    let t0 = Instant::now();
    tokio::time::sleep_until((t0 + Duration::from_millis(350)).into()).await;
    assert_eq!(openai(&srv, oa_body("x")).await.status, 503);
    assert_eq!(anthropic(&srv, an_body("x")).await.status, 529);
    tokio::time::sleep_until((t0 + Duration::from_millis(650)).into()).await;
    assert_eq!(openai(&srv, oa_body("x")).await.status, 200);
    assert_eq!(anthropic(&srv, an_body("x")).await.status, 200);
}

fn faulty(kind: &str) -> MockServer {
    start(MockConfig {
        fault_rate: 1.0,
        faults: vec![kind.to_string()],
        ..MockConfig::default()
    })
}

#[tokio::test]
async fn status_faults() {
    for (kind, oa_type, an_type) in [
        ("500", "server_error", "api_error"),
        ("502", "server_error", "api_error"),
        ("503", "server_error", "api_error"),
        ("529", "overloaded_error", "overloaded_error"),
        ("429", "requests", "rate_limit_error"),
    ] {
        let srv = faulty(kind);
        let status: u16 = kind.parse().unwrap();
        let r = openai(&srv, oa_body("x")).await;
        assert_eq!(r.status, status);
        assert_eq!(r.json()["error"]["type"], oa_type);
        let r = anthropic(&srv, an_body("x")).await;
        assert_eq!(r.status, status);
        assert_eq!(r.json()["error"]["type"], an_type);
        if kind == "429" {
            assert_eq!(r.header("retry-after-ms"), "20");
        }
        assert_eq!(srv.stats().by_status[kind], 2);
    }
}

#[tokio::test]
async fn reset_fault_closes_without_response() {
    let srv = faulty("reset");
    assert!(send(
        &srv,
        "/v1/chat/completions",
        "mock-key",
        &oa_body("x").to_string()
    )
    .await
    .is_err());
    assert!(
        send(&srv, "/v1/messages", "mock-key", &an_body("x").to_string())
            .await
            .is_err()
    );
    assert_eq!(srv.stats().by_status["reset"], 2);
}

#[tokio::test]
async fn cut_fault_truncates_streams_and_bodies() {
    let srv = faulty("cut");
    let mut body = oa_body("a b c d e f");
    body["stream"] = json!(true);
    let r = openai(&srv, body).await;
    assert_eq!(r.status, 200);
    assert!(r.body_error);
    assert!(r.text.starts_with("data: {"), "{}", r.text);
    assert!(!r.text.contains("[DONE]"));
    let mut body = an_body("a b c d e f");
    body["stream"] = json!(true);
    let r = anthropic(&srv, body).await;
    assert!(r.body_error);
    assert!(r.text.contains("event: message_start"));
    assert!(!r.text.contains("message_stop"));
    let r = openai(&srv, oa_body("a b c")).await;
    assert_eq!(r.status, 200);
    assert!(r.body_error);
    assert!(serde_json::from_str::<Value>(&r.text).is_err());
    let stats = srv.stats();
    assert_eq!(stats.by_status["cut"], 3);
    assert_eq!(stats.streamed, 2);
}

#[tokio::test]
async fn stats_and_control_endpoints() {
    let srv = start(MockConfig {
        track_prompts: true,
        ..MockConfig::default()
    });
    openai(&srv, oa_body("p1")).await;
    openai(&srv, oa_body("p1")).await;
    anthropic(&srv, an_body("p2")).await;
    let r = send(&srv, "/v1/nope", "mock-key", "{}").await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    let http = client();
    let base = format!("http://{}", srv.local_addr());
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let text = http
        .get(format!("{base}/_mock/stats"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"requests": 4, "by_status": {"200": 3, "404": 1},
            "by_path": {"/v1/chat/completions": 2, "/v1/messages": 1, "/v1/nope": 1},
            "streamed": 0, "prompts": {"p1": 2, "p2": 1},
            "params": {"max_tokens": 1, "system": 1}, "headers": {},
            "files_uploaded": 0, "batches_created": 0, "batch_requests": 0,
            "batches_cancelled": 0})
    );
    assert_eq!(serde_json::to_value(srv.stats()).unwrap(), v);
    let reset = http
        .post(format!("{base}/_mock/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(srv.stats(), super::MockStats::default());
    openai(&srv, oa_body("p3")).await;
    srv.reset_stats();
    assert_eq!(srv.stats().requests, 0);
}

#[tokio::test]
async fn latency_delays_the_headers() {
    let srv = start(MockConfig {
        latency_ms: 150,
        ..MockConfig::default()
    });
    let t0 = std::time::Instant::now();
    assert_eq!(openai(&srv, oa_body("x")).await.status, 200);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(150));
}

#[test]
fn stop_is_idempotent_and_frees_the_port() {
    let srv = start(MockConfig::default());
    let addr = srv.local_addr();
    assert!(std::net::TcpStream::connect(addr).is_ok());
    srv.stop();
    srv.stop();
    assert!(std::net::TcpStream::connect(addr).is_err());
    assert!(MockServer::start(
        MockConfig {
            faults: vec!["teapot".into()],
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse().unwrap()
    )
    .is_err());
}

/// Rough throughput over keep-alive connections, client and server in one process:
/// `cargo test --release -p prompt-runner-native mock::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, run by hand"]
async fn throughput() {
    let srv = start(MockConfig::default());
    let url = format!("http://{}/v1/chat/completions", srv.local_addr());
    let body = oa_body("a short benchmark prompt").to_string();
    let http = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while std::time::Instant::now() < deadline {
                    let resp = http
                        .post(&url)
                        .header("authorization", "Bearer mock-key")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("send");
                    resp.bytes().await.expect("body");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    println!("mock throughput: {} req/s", total / 3);
    assert_eq!(srv.stats().requests, total);
}

async fn send_with_headers(
    srv: &MockServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Reply {
    let mut req = client()
        .post(format!("http://{}{path}", srv.local_addr()))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        text,
        body_error: false,
    }
}

#[tokio::test]
async fn reasoning_models_refuse_max_tokens_and_temperature_as_openai_does() {
    let srv = start(MockConfig::default());
    let mut body = oa_body("think");
    body["model"] = json!("o4-mini");
    body["max_tokens"] = json!(100);
    let r = openai(&srv, body.clone()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}})
    );
    body.as_object_mut().unwrap().remove("max_tokens");
    body["max_completion_tokens"] = json!(100);
    body["temperature"] = json!(0.2);
    body["model"] = json!("gpt-5-mini-2025-08-07");
    let r = openai(&srv, body.clone()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) value is supported.",
            "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}})
    );
    // The default temperature and max_completion_tokens are fine; reasoning tokens are reported.
    body["temperature"] = json!(1);
    let r = openai(&srv, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: think");
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        2
    );
    assert_eq!(v["usage"]["completion_tokens"], 4);
    // The same body for another model: no refusal, no details.
    body["model"] = json!("gpt-4o-mini");
    body["temperature"] = json!(0.2);
    body["max_tokens"] = json!(100);
    let v = openai(&srv, body).await.json();
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert!(v["usage"].get("completion_tokens_details").is_none());
}

#[tokio::test]
async fn a_system_prompt_seen_before_is_read_from_the_cache() {
    let srv = start(MockConfig::default());
    let usage = |v: Value| v["usage"].clone();
    // OpenAI: the first answer caches nothing; the second reads the system prompt's 2 words.
    let first = usage(openai(&srv, oa_body("one")).await.json());
    assert!(first.get("prompt_tokens_details").is_none(), "{first}");
    let second = usage(openai(&srv, oa_body("two")).await.json());
    assert_eq!(second["prompt_tokens"], 3);
    assert_eq!(second["prompt_tokens_details"]["cached_tokens"], 2);
    // Anthropic: the first answer writes the cache, the next ones read it.
    let first = usage(anthropic(&srv, an_body("one")).await.json());
    assert_eq!(
        first,
        json!({"input_tokens": 1, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 0, "output_tokens": 2})
    );
    let mut streamed = an_body("two");
    streamed["stream"] = json!(true);
    let r = anthropic(&srv, streamed).await;
    let start: Value = serde_json::from_str(&frames(&r.text)[0].1).unwrap();
    assert_eq!(
        start["message"]["usage"],
        json!({"input_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2, "output_tokens": 1})
    );
    // No system prompt, nothing cached.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    assert!(usage(openai(&srv, body).await.json())
        .get("prompt_tokens_details")
        .is_none());
}

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1},
            "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "days", "unit"], "additionalProperties": false}}}])
}

#[tokio::test]
async fn tools_named_in_the_prompt_are_called_openai() {
    let srv = start(MockConfig::default());
    let mut body = oa_body("please get_weather for Paris");
    body["tools"] = weather_tool_openai();
    let r = openai(&srv, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "", "days": 1, "unit": "c"}));
    // Streamed: the id and name, then the arguments in pieces.
    body["stream"] = json!(true);
    let r = openai(&srv, body.clone()).await;
    let chunks: Vec<Value> = frames(&r.text)
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&streamed).unwrap(), arguments);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    // A prompt that names no tool gets text; tool_choice "none" never calls one.
    let mut plain = oa_body("hello");
    plain["tools"] = weather_tool_openai();
    let v = openai(&srv, plain.clone()).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: hello");
    plain["tool_choice"] = json!("required");
    let v = openai(&srv, plain).await.json();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    body["stream"] = json!(false);
    body["tool_choice"] = json!("none");
    let v = openai(&srv, body).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // A tool without a function is refused as the API does.
    let mut bad = oa_body("x");
    bad["tools"] = json!([{"type": "function"}]);
    let r = openai(&srv, bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "tools[0].function");
}

#[tokio::test]
async fn tools_named_in_the_prompt_are_called_anthropic() {
    let srv = start(MockConfig::default());
    let tools = json!([{"name": "lookup", "description": "d", "input_schema": {
        "type": "object", "properties": {"q": {"type": "string", "minLength": 2}}, "required": ["q"]}}]);
    let mut body = an_body("lookup the answer");
    body["tools"] = tools.clone();
    let r = anthropic(&srv, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(
        (&block["name"], &block["input"]),
        (&json!("lookup"), &json!({"q": "xx"}))
    );
    body["stream"] = json!(true);
    let r = anthropic(&srv, body).await;
    let data: Vec<Value> = frames(&r.text)
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(data[1]["content_block"]["type"], "tool_use");
    let partial: String = data
        .iter()
        .filter(|d| d["delta"]["type"] == "input_json_delta")
        .map(|d| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&partial).unwrap(),
        json!({"q": "xx"})
    );
    let stop = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use");
    // A forced tool is called whatever the prompt says.
    let mut forced = an_body("anything");
    forced["tools"] = tools;
    forced["tool_choice"] = json!({"type": "tool", "name": "lookup"});
    assert_eq!(
        anthropic(&srv, forced).await.json()["content"][0]["name"],
        "lookup"
    );
}

#[tokio::test]
async fn structured_output_is_json_that_fits_the_schema() {
    let srv = start(MockConfig::default());
    let schema = json!({"type": "object", "properties": {
        "answer": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "sources": {"type": "array", "items": {"type": "string"}}},
        "required": ["answer", "confidence", "sources"], "additionalProperties": false});
    let want = json!({"answer": "", "confidence": 0, "sources": []});
    let mut body = oa_body("what?");
    body["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "reply", "strict": true, "schema": schema}});
    let v = openai(&srv, body.clone()).await.json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), want);
    body["stream"] = json!(true);
    let r = openai(&srv, body).await;
    let text: String = frames(&r.text)
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| {
            let c: Value = serde_json::from_str(d).unwrap();
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), want);
    // Anthropic: output_config.format (GA) and output_format (beta).
    for field in ["output_config", "output_format"] {
        let mut body = an_body("what?");
        let format = json!({"type": "json_schema", "schema": schema});
        body[field] = if field == "output_config" {
            json!({"format": format})
        } else {
            format
        };
        let v = anthropic(&srv, body).await.json();
        let text = v["content"][0]["text"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            want,
            "{field}"
        );
    }
    let mut bad = oa_body("x");
    bad["response_format"] = json!({"type": "json_schema"});
    assert_eq!(openai(&srv, bad).await.status, 400);
}

#[tokio::test]
async fn stats_count_params_and_header_names_never_values() {
    let srv = start(MockConfig::default());
    let mut body = oa_body("x");
    body["seed"] = json!(7);
    body["top_p"] = json!(0.5);
    let headers = [
        ("authorization", "Bearer mock-key"),
        ("anthropic-beta", "tools-2024"),
        ("x-gateway-token", "very-secret-value"),
    ];
    let r = send_with_headers(&srv, "/v1/chat/completions", &headers, &body).await;
    assert_eq!(r.status, 200);
    let stats = srv.stats();
    assert_eq!(
        stats.params,
        [("seed".to_string(), 1), ("top_p".to_string(), 1)].into()
    );
    assert_eq!(
        stats.headers.keys().collect::<Vec<_>>(),
        ["anthropic-beta", "x-gateway-token"]
    );
    let text = serde_json::to_string(&stats).unwrap();
    assert!(!text.contains("very-secret-value") && !text.contains("mock-key"));
}

#[tokio::test]
async fn azure_deployments_are_served_like_openai() {
    let srv = start(MockConfig::default());
    let path = "/openai/deployments/gpt-4o-prod/chat/completions";
    let body = json!({"messages": [{"role": "user", "content": "hi azure"}]});
    let with_version = format!("{path}?api-version=2024-10-21");
    let r = send_with_headers(&srv, &with_version, &[("api-key", "mock-key")], &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["model"], "gpt-4o-prod");
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: hi azure");
    // No api-version: Azure's 404. A wrong key: Azure's 401 (Bearer is not its header).
    let r = send_with_headers(&srv, path, &[("api-key", "mock-key")], &body).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"error": {"code": "404", "message": "Resource not found"}})
    );
    let r = send_with_headers(
        &srv,
        &with_version,
        &[("authorization", "Bearer mock-key")],
        &body,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "401");
    // A reasoning deployment refuses max_tokens as OpenAI does.
    let mut reasoning = body.clone();
    reasoning["model"] = json!("o3-mini");
    reasoning["max_tokens"] = json!(5);
    let r = send_with_headers(&srv, &with_version, &[("api-key", "mock-key")], &reasoning).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("unsupported_parameter"))
    );
    assert_eq!(srv.stats().by_path[path], 4);
}

#[tokio::test]
async fn stream_as_json_answers_a_stream_with_a_whole_body() {
    let srv = start(MockConfig {
        stream_as_json: true,
        ..MockConfig::default()
    });
    let mut body = oa_body("whole");
    body["stream"] = json!(true);
    let r = openai(&srv, body).await;
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Echo: whole");
    assert_eq!(srv.stats().streamed, 0);
}

#[tokio::test]
async fn n_choices_and_logprobs_plain_and_streamed() {
    let srv = start(MockConfig::default());
    let mut body = oa_body("two words");
    body["n"] = json!(3);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let r = openai(&srv, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["content"], "Echo: two words");
    }
    // Usage counts every choice's words.
    assert_eq!(v["usage"]["completion_tokens"], 9);
    let logprobs = &choices[0]["logprobs"];
    let content = logprobs["content"].as_array().unwrap();
    let tokens: Vec<&str> = content
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, ["Echo:", " two", " words"]);
    assert_eq!(
        content[1],
        json!({"token": " two", "logprob": -0.02, "bytes": [32, 116, 119, 111],
            "top_logprobs": [
                {"token": " two", "logprob": -0.02, "bytes": [32, 116, 119, 111]},
                {"token": "alt1", "logprob": -1.02, "bytes": [97, 108, 116, 49]}]})
    );
    assert_eq!(logprobs["refusal"], Value::Null);
    let plain = crate::provider::openai::parse_response(r.text.as_bytes()).unwrap();
    assert_eq!(plain.choices, Some(vec!["Echo: two words".to_string(); 3]));
    let parsed: Value = serde_json::from_str(plain.logprobs.as_deref().unwrap()).unwrap();
    assert_eq!(&parsed, logprobs);

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = openai(&srv, body).await;
    assert_eq!(r.status, 200);
    let frames = frames(&r.text);
    // Every step once per choice, highest index first.
    let first: Value = serde_json::from_str(&frames[0].1).unwrap();
    assert_eq!(first["choices"][0]["index"], 2);
    let mut acc = crate::provider::openai::StreamAccumulator::new();
    for (event, data) in &frames {
        acc.on_event(event, data).expect("chunk");
    }
    let streamed = acc.finish().expect("whole stream");
    assert_eq!(streamed.text, "Echo: two words");
    assert_eq!(streamed.choices, plain.choices);
    assert_eq!(streamed.logprobs, plain.logprobs);
    assert_eq!(streamed.completion_tokens, Some(9));

    // Without logprobs or n, the answer is as before.
    let v = openai(&srv, oa_body("x")).await.json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn n_outside_1_to_128_is_refused_as_openai_does() {
    let srv = start(MockConfig::default());
    for (n, code, message) in [
        (json!(0), "integer_below_min_value", "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."),
        (json!(129), "integer_above_max_value", "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 129 instead."),
        (json!("2"), "invalid_type", "Invalid type for 'n': expected an integer, but got a string instead."),
    ] {
        let mut body = oa_body("x");
        body["n"] = n;
        let r = openai(&srv, body).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(
            r.json(),
            json!({"error": {"message": message, "type": "invalid_request_error", "param": "n", "code": code}})
        );
    }
    let mut body = oa_body("x");
    body["n"] = json!(128);
    let r = openai(&srv, body).await;
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 128);
    let mut body = oa_body("x");
    body["top_logprobs"] = json!(2);
    assert_eq!(openai(&srv, body).await.status, 400);
}
