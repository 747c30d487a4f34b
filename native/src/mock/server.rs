//! The chat and control paths: their routing, the order of checks, headers, and fault
//! delivery (the accept loop and the Batch API paths are `listen.rs`'s).

use super::anthropic;
use super::body::MockBody;
use super::config::{FaultKind, MockConfig};
use super::delay::Delays;
use super::errors::ApiError;
use super::faults::FaultInjector;
use super::openai;
use super::ratelimit::{openai_duration, retry_after_secs, Decision, TokenBucket};
use super::reply::{count_words, reply_text};
use super::request::{Answer, ChatRequest, Completion};
use super::stats::{Outcome, Stats, ANTHROPIC_PATH, OPENAI_PATH};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Request bodies above this are refused (413) rather than buffered.
pub(crate) const MAX_BODY: usize = 32 << 20;
/// System prompts the mock's prompt cache holds at most (a bound on its memory).
const MAX_CACHED_SYSTEMS: usize = 1 << 20;
/// `retry-after-ms` of an injected 429: short, so fault tests stay fast.
const FAULT_RETRY_AFTER: Duration = Duration::from_millis(20);

/// State shared by every connection of one server.
pub(crate) struct Shared {
    pub config: MockConfig,
    pub stats: Stats,
    bucket: Option<TokenBucket>,
    /// When the first API request arrived: time 0 of the rate-limit schedule and the overload
    /// episodes, so that a benchmark's timing does not depend on when the server started.
    epoch: OnceLock<Instant>,
    faults: FaultInjector,
    /// Only when a latency is configured.
    delays: Option<Delays>,
    /// Per-server random prefix plus a counter: unique, cheap ids.
    id_base: u64,
    ids: AtomicU64,
    /// System prompts answered so far (hashes, per provider): the prompt cache's contents.
    cached_systems: Mutex<HashSet<u64>>,
}

impl Shared {
    pub(crate) fn new(config: MockConfig, kinds: Vec<FaultKind>) -> Self {
        Shared {
            bucket: TokenBucket::new(config.rate_limit_rps, &config.rate_limit_schedule),
            epoch: OnceLock::new(),
            faults: FaultInjector::new(config.fault_rate, kinds, config.seed),
            delays: (config.latency_ms + config.latency_jitter_ms > 0).then(Delays::start),
            id_base: rand::random(),
            ids: AtomicU64::new(0),
            cached_systems: Mutex::new(HashSet::new()),
            stats: Stats::default(),
            config,
        }
    }

    /// Seconds from the first API request to `at`; the first call starts the clock.
    fn clock(&self, at: Instant) -> f64 {
        let epoch = *self.epoch.get_or_init(|| at);
        at.saturating_duration_since(epoch).as_secs_f64()
    }

    /// Whether `t` (server-clock seconds) falls within a configured overload episode.
    fn overloaded(&self, t: f64) -> bool {
        self.config
            .overload
            .iter()
            .any(|&(start, duration)| start <= t && t < start + duration)
    }

    /// The rate-limit decision for the headers, unless they are switched off.
    fn stated<'a>(&self, decision: Option<&'a Decision>) -> Option<&'a Decision> {
        decision.filter(|_| self.config.rate_limit_headers)
    }

    /// Whether `system` was answered before for `provider` (read from the cache), marking it
    /// as answered. The cache holds at most [`MAX_CACHED_SYSTEMS`] prompts; later ones are
    /// never cached.
    fn cached(&self, provider: Provider, system: &str) -> bool {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (provider.wire(), system).hash(&mut hasher);
        let hash = hasher.finish();
        let mut seen = self
            .cached_systems
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen.contains(&hash) {
            return true;
        }
        if seen.len() < MAX_CACHED_SYSTEMS {
            seen.insert(hash);
        }
        false
    }

    pub(crate) fn next_id(&self) -> String {
        format!(
            "{:016x}{:08x}",
            self.id_base,
            self.ids.fetch_add(1, Relaxed)
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Provider {
    OpenAi,
    Anthropic,
    /// Azure OpenAI: OpenAI's wire format at `/openai/deployments/{deployment}/chat/completions`.
    Azure,
}

/// Azure's body for a missing `api-version` (and any unknown URL): a 404.
const AZURE_NOT_FOUND: &str = r#"{"error":{"code":"404","message":"Resource not found"}}"#;
/// Azure's body for a missing or wrong `api-key`.
const AZURE_UNAUTHORIZED: &str = r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}"#;

impl Provider {
    pub(crate) fn error(self, err: &ApiError) -> (u16, String) {
        match (self, err) {
            (Provider::OpenAi, _) => openai::error(err),
            (Provider::Anthropic, _) => anthropic::error(err),
            (Provider::Azure, ApiError::Auth { .. }) => (401, AZURE_UNAUTHORIZED.to_string()),
            (Provider::Azure, ApiError::NotFound { .. }) => (404, AZURE_NOT_FOUND.to_string()),
            (Provider::Azure, _) => openai::error(err),
        }
    }

    /// The wire format: Azure's is OpenAI's.
    pub(crate) fn wire(self) -> Provider {
        match self {
            Provider::Azure => Provider::OpenAi,
            other => other,
        }
    }
}

/// The deployment of an Azure path `/openai/deployments/{deployment}/chat/completions`.
fn azure_deployment(path: &str) -> Option<&str> {
    let deployment = path
        .strip_prefix("/openai/deployments/")?
        .strip_suffix("/chat/completions")?;
    (!deployment.is_empty() && !deployment.contains('/')).then_some(deployment)
}

/// The `api-version` query parameter, if given and not empty.
fn api_version(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="))
        .filter(|v| !v.is_empty())
}

/// One request on any path but the Batch APIs' (chat, control, unknown: 404). An `Err` makes
/// hyper close the connection without a response (the "reset" fault).
pub(crate) async fn handle_api(
    shared: &Shared,
    req: Request<Incoming>,
) -> io::Result<Response<MockBody>> {
    let provider = match req.uri().path() {
        OPENAI_PATH => Provider::OpenAi,
        ANTHROPIC_PATH => Provider::Anthropic,
        path if azure_deployment(path).is_some() => Provider::Azure,
        "/health" => return Ok(control(&req, Method::GET, || r#"{"status":"ok"}"#.into())),
        "/_mock/stats" => {
            return Ok(control(&req, Method::GET, || {
                serde_json::to_string(&shared.stats.snapshot()).unwrap_or_default()
            }))
        }
        "/_mock/reset" => {
            return Ok(control(&req, Method::POST, || {
                shared.stats.reset();
                r#"{"reset":true}"#.into()
            }))
        }
        path => {
            shared.stats.request(path);
            let err = ApiError::NotFound {
                path: path.to_string(),
            };
            return Ok(error_response(shared, Provider::OpenAi, &err, None));
        }
    };
    shared.stats.request(req.uri().path());
    shared.stats.headers(req.headers());
    match api(shared, provider, req).await {
        Ok(resp) => Ok(resp),
        Err(Reject::Api(err, decision)) => {
            Ok(error_response(shared, provider, &err, decision.as_ref()))
        }
        Err(Reject::Reset) => {
            shared.stats.outcome(Outcome::Reset);
            Err(io::Error::other("mock fault: reset"))
        }
    }
}

enum Reject {
    Api(ApiError, Option<Decision>),
    Reset,
}

impl From<ApiError> for Reject {
    fn from(err: ApiError) -> Self {
        Reject::Api(err, None)
    }
}

/// The API path, checks in the documented order: auth, quota, validation, overload, rate limit,
/// latency, fault, bad marker, reply. Validation precedes the rate limit so that a malformed
/// request neither spends a token nor draws a fault: its 400 is deterministic. An overloaded
/// server refuses before the rate limit, so its refusals spend no token.
async fn api(
    shared: &Shared,
    provider: Provider,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Reject> {
    // The configured latency counts from the request's arrival, as a client sees it.
    let arrived = Instant::now();
    let arrived_at = shared.clock(arrived);
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed.into());
    }
    // Azure: without an api-version the URL names no resource.
    let deployment = azure_deployment(req.uri().path()).map(str::to_string);
    if provider == Provider::Azure && api_version(req.uri().query()).is_none() {
        let path = req.uri().path().to_string();
        return Err(ApiError::NotFound { path }.into());
    }
    check_auth(&shared.config, provider, req.headers())?;
    if shared.config.quota_exhausted {
        return Err(ApiError::Quota.into());
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| ApiError::BodyTooLarge)?
        .to_bytes();
    let chat = match provider {
        Provider::OpenAi => openai::parse(&body, None)?,
        // Azure takes the model from the deployment when the body names none.
        Provider::Azure => openai::parse(&body, deployment.as_deref())?,
        Provider::Anthropic => anthropic::parse(&body)?,
    };
    shared.stats.params(&chat.fields);
    if shared.config.track_prompts {
        shared.stats.prompt(&chat.last_user_text);
    }
    if shared.overloaded(arrived_at) {
        return Err(ApiError::Overloaded.into());
    }
    let decision = shared
        .bucket
        .as_ref()
        .map(|b| b.acquire_at(shared.clock(Instant::now())));
    if let Some(d) = decision.filter(|d| !d.allowed) {
        let err = ApiError::RateLimited {
            limit: d.limit,
            retry_after: d.until_token,
            injected: false,
        };
        return Err(Reject::Api(err, Some(d)));
    }
    let jitter = match shared.config.latency_jitter_ms {
        0 => 0,
        j => rand::random_range(0..=j),
    };
    if let Some(delays) = &shared.delays {
        let delay = Duration::from_millis(shared.config.latency_ms + jitter);
        delays.until(arrived + delay).await;
    }
    let fault = shared.faults.draw();
    let status = match fault {
        Some(FaultKind::Reset) => return Err(Reject::Reset),
        Some(FaultKind::TooManyRequests) => {
            let err = ApiError::RateLimited {
                limit: decision.map_or(0, |d| d.limit),
                retry_after: FAULT_RETRY_AFTER,
                injected: true,
            };
            return Err(Reject::Api(err, decision));
        }
        Some(FaultKind::Internal) => Some(500),
        Some(FaultKind::BadGateway) => Some(502),
        Some(FaultKind::Unavailable) => Some(503),
        Some(FaultKind::Overloaded) => Some(529),
        Some(FaultKind::Cut) | None => None,
    };
    if let Some(code) = status {
        return Err(Reject::Api(ApiError::Server(code), decision));
    }
    if !shared.config.bad_marker.is_empty()
        && chat.last_user_text.contains(&shared.config.bad_marker)
    {
        return Err(Reject::Api(ApiError::BadMarker, decision));
    }
    let cut = fault == Some(FaultKind::Cut);
    Ok(reply(shared, provider, &chat, decision.as_ref(), cut))
}

pub(crate) fn check_auth(
    config: &MockConfig,
    provider: Provider,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
    };
    match provider {
        Provider::OpenAi => {
            let sent = header("authorization").unwrap_or_default();
            let key = sent.strip_prefix("Bearer ").unwrap_or(&sent).trim();
            if key != config.api_key {
                return Err(ApiError::Auth {
                    key: key.to_string(),
                });
            }
        }
        Provider::Anthropic => {
            let key = header("x-api-key").unwrap_or_default();
            if key != config.api_key {
                return Err(ApiError::Auth {
                    key: key.into_owned(),
                });
            }
            if !headers.contains_key("anthropic-version") {
                return Err(ApiError::MissingVersion);
            }
        }
        Provider::Azure => {
            let key = header("api-key").unwrap_or_default();
            if key != config.api_key {
                return Err(ApiError::Auth {
                    key: key.into_owned(),
                });
            }
        }
    }
    Ok(())
}

/// The mock's answer to a validated request, before a provider module renders it, and the
/// id suffix it and its headers share.
fn completion(shared: &Shared, provider: Provider, chat: &ChatRequest) -> (Completion, String) {
    let (text, truncated) = match &chat.answer {
        Answer::Echo => reply_text(&chat.last_user_text, chat.max_tokens),
        Answer::Json(json) => (json.clone(), false),
        Answer::Tool { .. } => (String::new(), false),
    };
    let suffix = shared.next_id();
    let wire = provider.wire();
    let tool_call = match &chat.answer {
        Answer::Tool { name, arguments } => Some((
            match wire {
                Provider::Anthropic => format!("toolu_01{suffix}"),
                _ => format!("call_{suffix}"),
            },
            name.clone(),
            arguments.clone(),
        )),
        _ => None,
    };
    let visible = count_words(&text) as u64
        + tool_call
            .as_ref()
            .map_or(0, |(_, _, arguments)| count_words(arguments) as u64);
    let reasoning_tokens = if chat.reasoning { visible } else { 0 };
    let cached = chat
        .system
        .as_deref()
        .map(|system| shared.cached(provider, system));
    let completion = Completion {
        id: match wire {
            Provider::Anthropic => format!("msg_01{suffix}"),
            _ => format!("chatcmpl-{suffix}"),
        },
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        // Every choice is the same answer; usage counts them all, as OpenAI's does.
        completion_tokens: (visible + reasoning_tokens) * u64::from(chat.n),
        text,
        truncated,
        tool_call,
        reasoning_tokens,
        cached_tokens: if cached == Some(true) {
            chat.system_tokens
        } else {
            0
        },
        cache_write_tokens: if cached == Some(false) && wire == Provider::Anthropic {
            chat.system_tokens
        } else {
            0
        },
    };
    (completion, suffix)
}

/// The whole (not streamed) JSON answer in the provider's wire format.
fn answer_json(provider: Provider, chat: &ChatRequest, completion: &Completion) -> String {
    match provider.wire() {
        Provider::Anthropic => anthropic::body(chat, completion),
        _ => openai::body(chat, completion),
    }
}

/// One Batch API request's answer (status and JSON body), by the live path's rules without
/// HTTP: validation (400), a random fault (as a 5xx: a 429, reset or cut drawn is a 500, the
/// Batch API having no connection to cut nor a rate limit), the bad marker (400), then the
/// reply, always whole. No rate limit, overload episode or latency applies.
pub(crate) fn batch_answer(shared: &Shared, provider: Provider, body: &[u8]) -> (u16, String) {
    let parsed = match provider.wire() {
        Provider::Anthropic => anthropic::parse(body),
        _ => openai::parse(body, None),
    };
    let chat = match parsed {
        Ok(chat) => chat,
        Err(err) => return provider.error(&err),
    };
    shared.stats.params(&chat.fields);
    if shared.config.track_prompts {
        shared.stats.prompt(&chat.last_user_text);
    }
    let status = match shared.faults.draw() {
        Some(FaultKind::BadGateway) => Some(502),
        Some(FaultKind::Unavailable) => Some(503),
        Some(FaultKind::Overloaded) => Some(529),
        Some(_) => Some(500),
        None => None,
    };
    if let Some(code) = status {
        return provider.error(&ApiError::Server(code));
    }
    if !shared.config.bad_marker.is_empty()
        && chat.last_user_text.contains(&shared.config.bad_marker)
    {
        return provider.error(&ApiError::BadMarker);
    }
    let (completion, _) = completion(shared, provider, &chat);
    (200, answer_json(provider, &chat, &completion))
}

/// The successful (or cut) reply, whole or streamed (see `mod.rs` for the rules).
fn reply(
    shared: &Shared,
    provider: Provider,
    chat: &ChatRequest,
    decision: Option<&Decision>,
    cut: bool,
) -> Response<MockBody> {
    let (completion, suffix) = completion(shared, provider, chat);
    let wire = provider.wire();
    shared.stats.outcome(if cut {
        Outcome::Cut
    } else {
        Outcome::Status(200)
    });
    let stream = chat.stream && !shared.config.stream_as_json;
    let (body, content_type) = if stream {
        shared.stats.streamed();
        let mut frames = match wire {
            Provider::Anthropic => anthropic::stream_frames(chat, &completion),
            _ => openai::stream_frames(chat, &completion),
        };
        if cut {
            // Keep the first half: always at least one event, never the final one.
            frames.truncate(frames.len() / 2);
        }
        (
            MockBody::stream(frames, cut),
            "text/event-stream; charset=utf-8",
        )
    } else {
        let json = Bytes::from(answer_json(provider, chat, &completion));
        let body = if cut {
            MockBody::cut(json)
        } else {
            MockBody::full(json)
        };
        (body, "application/json")
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if stream {
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    }
    common_headers(headers, provider, &suffix, shared.stated(decision));
    resp
}

/// Builds the error response, counting it, with the headers a client needs to back off.
pub(crate) fn error_response(
    shared: &Shared,
    provider: Provider,
    err: &ApiError,
    decision: Option<&Decision>,
) -> Response<MockBody> {
    let (status, json) = provider.error(err);
    shared.stats.outcome(Outcome::Status(status));
    let mut resp = Response::new(MockBody::full(json));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let ApiError::RateLimited {
        retry_after,
        injected,
        ..
    } = err
    {
        headers.insert(
            "retry-after",
            HeaderValue::from(retry_after_secs(*retry_after)),
        );
        // Real Anthropic 429s carry only `retry-after`; the injected 429 sends the precise
        // value on both so that fault tests stay fast. A mock without rate-limit headers is a
        // gateway that states nothing but `retry-after`.
        if shared.config.rate_limit_headers && (provider.wire() == Provider::OpenAi || *injected) {
            let ms = retry_after.as_millis().max(1) as u64;
            headers.insert("retry-after-ms", HeaderValue::from(ms));
        }
    }
    common_headers(
        headers,
        provider,
        &shared.next_id(),
        shared.stated(decision),
    );
    resp
}

/// Request id and, when a rate limit is configured (and its headers are on), the provider's
/// rate-limit headers in its units: the limit per minute (60 × the rate in force), the remaining
/// room scaled to a minute (0 when the next request would be refused), and the reset: OpenAI the
/// duration until the bucket is full ("20ms", "1.5s"), Anthropic the RFC 3339 time it is full.
pub(crate) fn common_headers(
    headers: &mut HeaderMap,
    provider: Provider,
    id: &str,
    decision: Option<&Decision>,
) {
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    match provider {
        Provider::OpenAi | Provider::Azure => {
            set(headers, "x-request-id", format!("req_{id}"));
            if let Some(d) = decision {
                set(headers, "x-ratelimit-limit-requests", d.limit.to_string());
                set(
                    headers,
                    "x-ratelimit-remaining-requests",
                    d.remaining.to_string(),
                );
                set(
                    headers,
                    "x-ratelimit-reset-requests",
                    openai_duration(d.until_full),
                );
            }
        }
        Provider::Anthropic => {
            set(headers, "request-id", format!("req_{id}"));
            if let Some(d) = decision {
                set(
                    headers,
                    "anthropic-ratelimit-requests-limit",
                    d.limit.to_string(),
                );
                set(
                    headers,
                    "anthropic-ratelimit-requests-remaining",
                    d.remaining.to_string(),
                );
                let reset = SystemTime::now() + d.until_full;
                set(
                    headers,
                    "anthropic-ratelimit-requests-reset",
                    humantime::format_rfc3339_seconds(reset).to_string(),
                );
            }
        }
    }
}

/// A control endpoint (not counted in the stats): JSON from `body` if the method is right.
fn control(
    req: &Request<Incoming>,
    method: Method,
    body: impl FnOnce() -> String,
) -> Response<MockBody> {
    let (status, json) = if req.method() == method {
        (StatusCode::OK, body())
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            format!(r#"{{"error":{{"message":"use {method}"}}}}"#),
        )
    };
    let mut resp = Response::new(MockBody::full(json));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
