//! One HTTP attempt: send a prepared request, read a plain or SSE response, classify failures.
//!
//! CONTRACT (used by executor.rs; keep these names and signatures):
//! `send(client, kind, req, stream, timeout) -> Result<Success, AttemptError>`.

use crate::error::ErrorType;
use crate::headers;
use crate::provider::{
    self, classify_status, Accumulator, Completion, PreparedRequest, ProviderKind, StreamStep,
};
use crate::secret::{redact_secrets, ApiKey};
use crate::sse::{self, SseError};
use futures_util::{FutureExt, StreamExt};
use std::time::{Duration, Instant, SystemTime};

/// The `user-agent` of every request.
pub const USER_AGENT: &str = "prompt-runner/0.1";

/// A client for one run: a keep-alive pool as large as the run's concurrency, so that steady
/// state reuses connections instead of paying TCP+TLS per request.
///
/// Panics if reqwest cannot build a client at all (no TLS provider); see [`try_build_client`].
pub fn build_client(pool_size: usize) -> reqwest::Client {
    try_build_client(pool_size).expect("failed to build the HTTP client")
}

/// [`build_client`], returning reqwest's error instead of panicking.
pub fn try_build_client(pool_size: usize) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a default TLS provider; this is idempotent.
    crate::runtime::install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(pool_size.max(1))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(60))
        // Environment proxies would silently reroute (and could log) API traffic.
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(USER_AGENT)
        .build()
}

/// A 2xx with a complete completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    pub completion: Completion,
    pub http_status: u16,
    /// Time from sending to the first non-empty text delta (streaming only).
    pub ttft: Option<Duration>,
    /// The rate limits the response's headers state, if any.
    pub limits: Option<headers::StatedLimits>,
}

/// A failed attempt, classified for the retry policy. `message` never contains request
/// headers; a key (or credential header) the provider echoes back is redacted from it, and so
/// is anything shaped like a provider key (see [`redact_secrets`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct AttemptError {
    pub kind: ErrorType,
    /// The response's status, when one arrived.
    pub http_status: Option<u16>,
    pub message: String,
    /// How long the server asked us to wait (Retry-After, reset headers), if it said.
    pub retry_after: Option<Duration>,
    /// The rate limits the response's headers state, if a response came and stated any.
    pub limits: Option<headers::StatedLimits>,
}

impl AttemptError {
    fn new(kind: ErrorType, http_status: Option<u16>, message: impl Into<String>) -> Self {
        Self {
            kind,
            http_status,
            message: message.into(),
            retry_after: None,
            limits: None,
        }
    }
}

/// Sends one attempt and reads the whole answer. `timeout` covers everything (connecting,
/// headers, body or stream); when it runs out the attempt fails with `Timeout`.
pub async fn send(
    client: &reqwest::Client,
    kind: ProviderKind,
    req: &PreparedRequest,
    stream: bool,
    timeout: Duration,
) -> Result<Success, AttemptError> {
    send_with(client, kind, req, stream, timeout, |_| {}).await
}

/// [`send`], also handing each streamed text delta to `on_delta` as it arrives (for printing
/// a stream live). Not called for non-streaming requests; a streaming request answered with a
/// whole JSON body (some gateways do that) hands its whole text over as one delta.
pub async fn send_with(
    client: &reqwest::Client,
    kind: ProviderKind,
    req: &PreparedRequest,
    stream: bool,
    timeout: Duration,
    mut on_delta: impl FnMut(&str),
) -> Result<Success, AttemptError> {
    let mut status = None;
    let attempt = attempt(client, kind, req, stream, &mut status, &mut on_delta);
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(AttemptError::new(
            ErrorType::Timeout,
            status,
            format!(
                "no complete response within {}",
                humantime::format_duration(timeout)
            ),
        )),
    };
    result.map_err(|mut error| {
        error.message = redact(req, &error.message);
        error
    })
}

/// Providers echo keys (whole or masked) in 401 messages, and gateways relay their upstream's:
/// remove ours and any credential header's value here, where they are known, then anything
/// shaped like a provider key, so no caller can print one by accident.
fn redact(req: &PreparedRequest, message: &str) -> String {
    redact_for(&req.target, message)
}

/// [`redact`] for a target's credentials (also used for Batch API answers, `batch_api.rs`).
pub(crate) fn redact_for(target: &provider::Target, message: &str) -> String {
    let mut message = message.to_string();
    for credential in target.credentials() {
        message = ApiKey::new(credential).redact(&message);
    }
    redact_secrets(&message)
}

async fn attempt(
    client: &reqwest::Client,
    kind: ProviderKind,
    req: &PreparedRequest,
    stream: bool,
    status_out: &mut Option<u16>,
    on_delta: &mut impl FnMut(&str),
) -> Result<Success, AttemptError> {
    let started = Instant::now();
    // The URL and headers are parsed once per run, the body is shared, not copied.
    let (url, headers) = req
        .target
        .http()
        .map_err(|message| AttemptError::new(ErrorType::BadRequest, None, message))?;
    let response = client
        .post(url.clone())
        .headers(headers.clone())
        .body(req.body.clone())
        .send()
        .await
        .map_err(|e| request_error(&e, None))?;
    let status = response.status().as_u16();
    *status_out = Some(status);
    let limits = headers::stated_limits(response.headers());

    if !response.status().is_success() {
        let retry_after = headers::retry_delay(response.headers(), SystemTime::now());
        // An unreadable error body still leaves the status to classify by.
        let body = response.bytes().await.unwrap_or_default();
        let mut error = AttemptError::new(
            classify_status(kind, status, &body),
            Some(status),
            format!("HTTP {status}: {}", provider::error_message(kind, &body)),
        );
        error.retry_after = retry_after;
        error.limits = limits;
        return Err(error);
    }

    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !stream || is_json {
        let body = response
            .bytes()
            .await
            .map_err(|e| request_error(&e, Some(status)))?;
        // A server that ignores `stream: true` still sent a whole answer, not a partial one;
        // a JSON error with a 200 (some gateways) fails to parse and is reported as such.
        let mut completion = provider::parse_response(kind, &body).map_err(|message| {
            let message = if stream {
                let error = provider::error_message(kind, &body);
                format!("expected an event stream, got JSON: {error}")
            } else {
                message
            };
            AttemptError::new(ErrorType::InvalidResponse, Some(status), message)
        })?;
        if stream && !completion.text.is_empty() {
            // The caller prints a stream from its deltas: the whole answer is its one delta.
            on_delta(&completion.text);
        }
        if req.target.keep_raw {
            completion.raw = Some(String::from_utf8_lossy(&body).into_owned());
        }
        return Ok(Success {
            completion,
            http_status: status,
            ttft: None,
            limits,
        });
    }

    let mut events = std::pin::pin!(sse::events(response.bytes_stream()));
    let mut acc = Accumulator::keeping_raw(kind, req.target.keep_raw);
    let mut ttft = None;
    while let Some(item) = events.next().await {
        let event = match item {
            Ok(event) => event,
            Err(SseError::Transport(e)) => {
                let cause = describe(&e);
                let message = format!("stream cut before its final event: {cause}");
                return Err(AttemptError::new(
                    ErrorType::IncompleteStream,
                    Some(status),
                    message,
                ));
            }
            Err(SseError::Malformed(m)) => {
                let message = format!("malformed event stream: {m}");
                return Err(AttemptError::new(
                    ErrorType::InvalidResponse,
                    Some(status),
                    message,
                ));
            }
        };
        match acc.on_event(&event.event, &event.data) {
            Ok(StreamStep::Done) => {
                // If the body's end is already here, seeing it lets hyper return the connection
                // to the pool; otherwise dropping the stream closes it, which is also fine.
                let _ = events.next().now_or_never();
                break;
            }
            Ok(StreamStep::Delta(n)) => {
                ttft.get_or_insert_with(|| started.elapsed());
                let text = acc.text();
                on_delta(text.get(text.len().saturating_sub(n)..).unwrap_or_default());
            }
            Ok(StreamStep::Continue) => {}
            Err(failure) => {
                return Err(AttemptError::new(
                    failure.kind,
                    Some(status),
                    failure.message,
                ));
            }
        }
    }
    let completion = acc
        .finish()
        .map_err(|f| AttemptError::new(f.kind, Some(status), f.message))?;
    Ok(Success {
        completion,
        http_status: status,
        ttft,
        limits,
    })
}

/// Classifies a reqwest failure before or while reading a response.
fn request_error(err: &reqwest::Error, status: Option<u16>) -> AttemptError {
    let kind = if err.is_builder() {
        // A URL or header value reqwest refuses: the same for every attempt.
        ErrorType::BadRequest
    } else if err.is_timeout() {
        ErrorType::Timeout
    } else {
        ErrorType::Connection
    };
    AttemptError::new(kind, status, describe(err))
}

/// The error and its causes on one line ("error sending request: ... : Connection refused").
/// reqwest's messages name the URL but never header values, so the key cannot appear.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{prepare, Message, RequestParams};
    use crate::secret::ApiKey;
    use tokio::net::{TcpListener, TcpStream};

    const KEY: &str = "sk-test-secret-key-123456";

    /// What the canned server does with one connection.
    #[derive(Clone)]
    enum Reply {
        /// Write these pieces, pausing between them, then close.
        Writes(Vec<String>),
        /// Read the request, then close without answering.
        Close,
        /// Read the request, then stay silent.
        Hang,
    }

    /// A one-shot HTTP server on loopback answering every connection with `reply`.
    async fn serve(reply: Reply) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    read_request(&socket).await;
                    match reply {
                        Reply::Writes(pieces) => {
                            for piece in pieces {
                                write_all(&socket, piece.as_bytes()).await;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                        Reply::Close => {}
                        Reply::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    /// Reads headers and a Content-Length body (tokio's io-util is not enabled in this crate).
    async fn read_request(socket: &TcpStream) {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            match socket.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
            let text = String::from_utf8_lossy(&data).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    return;
                }
            }
        }
    }

    async fn write_all(socket: &TcpStream, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if socket.writable().await.is_err() {
                return;
            }
            match socket.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    }

    fn response(status: &str, headers: &[&str], body: &str) -> String {
        let mut text = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.push_str(body);
        text
    }

    fn request(kind: ProviderKind, base: &str, stream: bool) -> PreparedRequest {
        request_with(kind, base, stream, &[], false)
    }

    /// [`request`] with extra headers, keeping raw answers or not.
    fn request_with(
        kind: ProviderKind,
        base: &str,
        stream: bool,
        headers: &[(String, String)],
        keep_raw: bool,
    ) -> PreparedRequest {
        let params = RequestParams {
            model: "m".into(),
            stream,
            ..RequestParams::default()
        };
        let messages = [Message {
            role: "user".into(),
            content: serde_json::json!("hi"),
        }];
        let base = match kind {
            ProviderKind::OpenAi | ProviderKind::Azure => format!("{base}/v1"),
            ProviderKind::Anthropic => base.to_string(),
        };
        let key = ApiKey::new(KEY);
        let mut endpoint = crate::provider::Endpoint::new(kind, &base, &key);
        endpoint.headers = headers;
        endpoint.keep_raw = keep_raw;
        crate::provider::prepare_parsed(kind, &endpoint.target(), &params, &messages, None)
    }

    async fn call(kind: ProviderKind, reply: Reply, stream: bool) -> Result<Success, AttemptError> {
        call_with(kind, reply, stream, &[], false).await
    }

    /// [`call`] with extra headers, keeping raw answers or not.
    async fn call_with(
        kind: ProviderKind,
        reply: Reply,
        stream: bool,
        headers: &[(String, String)],
        keep_raw: bool,
    ) -> Result<Success, AttemptError> {
        let base = serve(reply).await;
        let client = build_client(4);
        let req = request_with(kind, &base, stream, headers, keep_raw);
        send(&client, kind, &req, stream, Duration::from_secs(5)).await
    }

    const SSE_HEAD: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

    fn chunk(data: &str) -> String {
        format!("{:x}\r\n{data}\r\n", data.len())
    }

    #[tokio::test]
    async fn json_200() {
        let body = r#"{"choices":[{"message":{"content":"Paris"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":1}}"#;
        let reply = Reply::Writes(vec![response(
            "200 OK",
            &["content-type: application/json"],
            body,
        )]);
        let ok = call(ProviderKind::OpenAi, reply, false)
            .await
            .expect("success");
        assert_eq!(ok.http_status, 200);
        assert_eq!(ok.completion.text, "Paris");
        assert_eq!(ok.completion.prompt_tokens, Some(4));
        assert_eq!(ok.ttft, None);
    }

    #[tokio::test]
    async fn unparseable_200_is_invalid_response() {
        let reply = Reply::Writes(vec![response("200 OK", &[], "<html>hello</html>")]);
        let err = call(ProviderKind::Anthropic, reply, false)
            .await
            .expect_err("invalid");
        assert_eq!(
            (err.kind, err.http_status),
            (ErrorType::InvalidResponse, Some(200))
        );
    }

    #[tokio::test]
    async fn sse_200_in_several_writes() {
        let events = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        ];
        let mut writes = vec![SSE_HEAD.to_string()];
        writes.extend(events.iter().map(|e| chunk(e)));
        // The last event split mid-line across two writes.
        let last = writes.pop().unwrap_or_default();
        let (a, b) = last.split_at(last.len() / 2);
        writes.extend([a.to_string(), b.to_string(), "0\r\n\r\n".to_string()]);
        let base = serve(Reply::Writes(writes)).await;
        let client = build_client(4);
        let req = request(ProviderKind::OpenAi, &base, true);
        let mut pieces = Vec::new();
        let ok = send_with(
            &client,
            ProviderKind::OpenAi,
            &req,
            true,
            Duration::from_secs(5),
            |d| pieces.push(d.to_string()),
        )
        .await
        .expect("success");
        assert_eq!(ok.completion.text, "Hello");
        assert_eq!(pieces, ["Hel", "lo"]);
        assert_eq!(ok.completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(ok.completion.completion_tokens, Some(2));
        assert!(ok.ttft.is_some_and(|t| t < Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn anthropic_sse_200() {
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Oui\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ];
        let mut writes = vec![SSE_HEAD.to_string()];
        writes.extend(events.iter().map(|e| chunk(e)));
        writes.push("0\r\n\r\n".into());
        let ok = call(ProviderKind::Anthropic, Reply::Writes(writes), true)
            .await
            .expect("success");
        assert_eq!(ok.completion.text, "Oui");
        assert_eq!(ok.completion.prompt_tokens, Some(7));
        assert_eq!(ok.completion.completion_tokens, Some(1));
    }

    #[tokio::test]
    async fn stream_cut_before_done_is_incomplete() {
        let data = "data: {\"choices\":[{\"delta\":{\"content\":\"partial\"}}]}\n\n";
        // Chunked body that stops mid-stream: the connection closes without the last chunk.
        let writes = vec![SSE_HEAD.to_string(), chunk(data)];
        let err = call(ProviderKind::OpenAi, Reply::Writes(writes), true)
            .await
            .expect_err("cut");
        assert_eq!(
            (err.kind, err.http_status),
            (ErrorType::IncompleteStream, Some(200))
        );
        // A stream that ends cleanly but without [DONE] is just as incomplete.
        let writes = vec![SSE_HEAD.to_string(), chunk(data), "0\r\n\r\n".into()];
        let err = call(ProviderKind::OpenAi, Reply::Writes(writes), true)
            .await
            .expect_err("no done");
        assert_eq!(err.kind, ErrorType::IncompleteStream);
    }

    #[tokio::test]
    async fn error_event_mid_stream() {
        let data = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let writes = vec![SSE_HEAD.to_string(), chunk(data), "0\r\n\r\n".into()];
        let err = call(ProviderKind::Anthropic, Reply::Writes(writes), true)
            .await
            .expect_err("error");
        assert_eq!(err.kind, ErrorType::Overloaded);
        assert!(err.message.contains("Overloaded"));
    }

    #[tokio::test]
    async fn rate_limited_with_retry_after() {
        let body = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#;
        let reply = Reply::Writes(vec![response(
            "429 Too Many Requests",
            &["retry-after: 3"],
            body,
        )]);
        let err = call(ProviderKind::OpenAi, reply, false)
            .await
            .expect_err("429");
        assert_eq!(err.kind, ErrorType::RateLimited);
        assert_eq!(err.http_status, Some(429));
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
        assert!(err.message.contains("Rate limit reached"));
        // Also on a streaming request, and for Anthropic's 529.
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let reply = Reply::Writes(vec![response(
            "529 Overloaded",
            &["retry-after-ms: 250"],
            body,
        )]);
        let err = call(ProviderKind::Anthropic, reply, true)
            .await
            .expect_err("529");
        assert_eq!(err.kind, ErrorType::Overloaded);
        assert_eq!(err.retry_after, Some(Duration::from_millis(250)));
    }

    #[tokio::test]
    async fn unauthorized_never_echoes_the_key() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-test-***********3456.","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let reply = Reply::Writes(vec![response("401 Unauthorized", &[], body)]);
        let err = call(ProviderKind::OpenAi, reply, false)
            .await
            .expect_err("401");
        assert_eq!(err.kind, ErrorType::Auth);
        assert!(err.kind.is_fatal());
        assert!(!err.message.contains(KEY));
        // A provider echoing the key whole gets it redacted too.
        let body = format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#);
        let reply = Reply::Writes(vec![response("401 Unauthorized", &[], &body)]);
        let err = call(ProviderKind::OpenAi, reply, false)
            .await
            .expect_err("401");
        assert!(err.message.contains("Incorrect API key provided"));
        assert!(!err.message.contains("secret-key"), "{}", err.message);
    }

    #[tokio::test]
    async fn stream_request_answered_with_json() {
        let body = r#"{"choices":[{"message":{"content":"whole"},"finish_reason":"stop"}]}"#;
        let head = ["content-type: application/json"];
        let reply = Reply::Writes(vec![response("200 OK", &head, body)]);
        let base = serve(reply).await;
        let req = request(ProviderKind::OpenAi, &base, true);
        let mut pieces = Vec::new();
        let ok = send_with(
            &build_client(1),
            ProviderKind::OpenAi,
            &req,
            true,
            Duration::from_secs(5),
            |piece| pieces.push(piece.to_string()),
        )
        .await
        .expect("complete JSON");
        assert_eq!((ok.completion.text.as_str(), ok.ttft), ("whole", None));
        // Whoever prints the stream from its deltas gets the whole answer as one.
        assert_eq!(pieces, ["whole"]);
        // An Anthropic gateway doing the same.
        let body = r#"{"type":"message","content":[{"type":"text","text":"entier"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}"#;
        let reply = Reply::Writes(vec![response("200 OK", &head, body)]);
        let ok = call(ProviderKind::Anthropic, reply, true)
            .await
            .expect("complete JSON");
        assert_eq!(ok.completion.text, "entier");
        let body = r#"{"error":{"message":"upstream failed","type":"server_error"}}"#;
        let reply = Reply::Writes(vec![response("200 OK", &head, body)]);
        let err = call(ProviderKind::OpenAi, reply, true)
            .await
            .expect_err("JSON error");
        assert_eq!(err.kind, ErrorType::InvalidResponse);
        assert!(err.message.contains("upstream failed"));
    }

    #[tokio::test]
    async fn a_credential_that_is_not_ours_is_redacted_too() {
        // A gateway relaying its upstream's 401, echoing the upstream key and a token.
        let body = r#"{"error":{"message":"Upstream said: Incorrect API key provided: up-stream-key-99. Key sk-proj-Upstream0123456789abc; header Bearer abcdefghijklmnop","type":"auth_error"}}"#;
        let reply = Reply::Writes(vec![response("401 Unauthorized", &[], body)]);
        let err = call(ProviderKind::OpenAi, reply, false)
            .await
            .expect_err("401");
        assert_eq!(err.kind, ErrorType::Auth);
        for leak in ["up-stream-key", "Upstream0123", "abcdefghijklmnop"] {
            assert!(!err.message.contains(leak), "{}", err.message);
        }
        assert!(err.message.contains("Incorrect API key provided: ***"));
    }

    #[tokio::test]
    async fn a_credential_header_echoed_back_is_redacted() {
        let secret = "gateway-token-5f2e9a";
        let body = format!(r#"{{"error":{{"message":"bad token {secret} for x-gw-token"}}}}"#);
        let reply = Reply::Writes(vec![response("403 Forbidden", &[], &body)]);
        let headers = [
            ("x-gw-token".to_string(), secret.to_string()),
            ("x-title".to_string(), "evals".to_string()),
        ];
        let err = call_with(ProviderKind::OpenAi, reply, false, &headers, false)
            .await
            .expect_err("403");
        assert!(!err.message.contains(secret), "{}", err.message);
        assert!(err.message.contains("x-gw-token"));
    }

    #[tokio::test]
    async fn keep_raw_keeps_the_body_or_the_assembled_stream() {
        let body = r#"{"id":"c1","choices":[{"index":0,"message":{"content":"a"},"finish_reason":"stop"},{"index":1,"message":{"content":"b"},"finish_reason":"stop"}]}"#;
        let head = ["content-type: application/json"];
        let reply = Reply::Writes(vec![response("200 OK", &head, body)]);
        let ok = call_with(ProviderKind::OpenAi, reply, false, &[], true)
            .await
            .expect("ok");
        // n = 2: the output is the first choice, the raw body keeps both.
        assert_eq!(ok.completion.text, "a");
        assert_eq!(ok.completion.raw.as_deref(), Some(body));

        let events = [
            "data: {\"id\":\"c2\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}},{\"index\":1,\"delta\":{\"content\":\"Yo\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"stop\"},{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\n",
            "data: [DONE]\n\n",
        ];
        let mut writes = vec![SSE_HEAD.to_string()];
        writes.extend(events.iter().map(|e| chunk(e)));
        writes.push("0\r\n\r\n".into());
        let ok = call_with(ProviderKind::OpenAi, Reply::Writes(writes), true, &[], true)
            .await
            .expect("ok");
        assert_eq!(ok.completion.text, "Hi");
        assert_eq!(ok.completion.cached_prompt_tokens, Some(1));
        let raw: serde_json::Value =
            serde_json::from_str(ok.completion.raw.as_deref().expect("raw")).unwrap();
        assert_eq!(raw["id"], "c2");
        assert_eq!(raw["choices"][0]["message"]["content"], "Hi");
        assert_eq!(raw["choices"][1]["message"]["content"], "Yo");
        assert_eq!(raw["choices"][1]["finish_reason"], "stop");
        assert_eq!(raw["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    }

    #[test]
    fn send_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        crate::runtime::install_crypto_provider();
        let client = build_client(1);
        let req = request(ProviderKind::Anthropic, "http://127.0.0.1:9", true);
        let future = send(
            &client,
            ProviderKind::Anthropic,
            &req,
            true,
            Duration::from_secs(1),
        );
        assert_send(&future);
    }

    #[tokio::test]
    async fn connection_closed_without_response() {
        let err = call(ProviderKind::OpenAi, Reply::Close, false)
            .await
            .expect_err("closed");
        assert_eq!((err.kind, err.http_status), (ErrorType::Connection, None));
        assert!(!err.message.contains(KEY));
    }

    #[tokio::test]
    async fn an_unusable_url_or_key_fails_without_sending_or_echoing_the_key() {
        let params = RequestParams {
            model: "m".into(),
            ..RequestParams::default()
        };
        let messages = [Message {
            role: "user".into(),
            content: serde_json::json!("hi"),
        }];
        let client = build_client(1);
        for (base, key, says) in [
            (
                "http://127.0.0.1:9/v1",
                "sk-bad\nkey-123",
                "invalid value for header authorization",
            ),
            (
                "no scheme here",
                KEY,
                "invalid URL no scheme here/chat/completions",
            ),
        ] {
            let req = prepare(
                ProviderKind::OpenAi,
                base,
                &ApiKey::new(key),
                &params,
                &messages,
            );
            let err = send(
                &client,
                ProviderKind::OpenAi,
                &req,
                false,
                Duration::from_secs(5),
            )
            .await
            .expect_err("unusable");
            assert_eq!((err.kind, err.http_status), (ErrorType::BadRequest, None));
            assert!(err.message.starts_with(says), "{}", err.message);
            assert!(!err.message.contains("sk-bad") && !err.message.contains(KEY));
        }
    }

    #[tokio::test]
    async fn connection_refused() {
        // Bind then drop, so the port is (almost certainly) closed.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let client = build_client(1);
        let req = request(ProviderKind::OpenAi, &base, false);
        let err = send(
            &client,
            ProviderKind::OpenAi,
            &req,
            false,
            Duration::from_secs(5),
        )
        .await
        .expect_err("refused");
        assert_eq!(err.kind, ErrorType::Connection);
    }

    #[tokio::test]
    async fn timeout_covers_the_stream() {
        let base = serve(Reply::Hang).await;
        let client = build_client(1);
        let req = request(ProviderKind::OpenAi, &base, false);
        let err = send(
            &client,
            ProviderKind::OpenAi,
            &req,
            false,
            Duration::from_millis(200),
        )
        .await
        .expect_err("timeout");
        assert_eq!((err.kind, err.http_status), (ErrorType::Timeout, None));

        // Headers arrive, the stream then stalls: still a timeout, with the status kept.
        let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
        let mut writes = vec![SSE_HEAD.to_string(), chunk(first)];
        writes.extend(std::iter::repeat_n(String::new(), 400));
        let base = serve(Reply::Writes(writes)).await;
        let req = request(ProviderKind::OpenAi, &base, true);
        let err = send(
            &client,
            ProviderKind::OpenAi,
            &req,
            true,
            Duration::from_millis(300),
        )
        .await
        .expect_err("stalled stream");
        assert_eq!((err.kind, err.http_status), (ErrorType::Timeout, Some(200)));
    }
}
