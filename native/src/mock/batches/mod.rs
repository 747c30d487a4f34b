//! The providers' Batch APIs: OpenAI's Files and Batches (`files.rs`, `openai.rs`) and
//! Anthropic's Message Batches (`anthropic.rs`), on an accelerated clock (`clock.rs`).
//!
//! Files and batches live in memory for the server's life. Each request of a batch is answered
//! when the batch is created, by the live path's rules (`server::batch_answer`), in a seeded
//! shuffled order; the batch then reveals those answers as time passes.

mod anthropic;
mod clock;
mod files;
mod openai;

use super::body::MockBody;
use super::errors::ApiError;
use super::server::{check_auth, common_headers, error_response, Provider, Shared};
use super::stats::Outcome;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A Batch API route, with the id it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `POST /v1/files`
    Upload,
    /// `GET /v1/files/{id}`
    File(String),
    /// `GET /v1/files/{id}/content`
    FileContent(String),
    /// `POST /v1/batches`, `GET /v1/batches`
    OpenAiBatches,
    /// `GET /v1/batches/{id}`
    OpenAiBatch(String),
    /// `POST /v1/batches/{id}/cancel`
    OpenAiCancel(String),
    /// `POST /v1/messages/batches`, `GET /v1/messages/batches`
    AnthropicBatches,
    /// `GET /v1/messages/batches/{id}`
    AnthropicBatch(String),
    /// `POST /v1/messages/batches/{id}/cancel`
    AnthropicCancel(String),
    /// `GET /v1/messages/batches/{id}/results`
    AnthropicResults(String),
}

impl Route {
    /// The path as counted in `MockStats::by_path`: ids collapsed to `{id}`.
    fn key(&self) -> &'static str {
        match self {
            Route::Upload => "/v1/files",
            Route::File(_) => "/v1/files/{id}",
            Route::FileContent(_) => "/v1/files/{id}/content",
            Route::OpenAiBatches => "/v1/batches",
            Route::OpenAiBatch(_) => "/v1/batches/{id}",
            Route::OpenAiCancel(_) => "/v1/batches/{id}/cancel",
            Route::AnthropicBatches => "/v1/messages/batches",
            Route::AnthropicBatch(_) => "/v1/messages/batches/{id}",
            Route::AnthropicCancel(_) => "/v1/messages/batches/{id}/cancel",
            Route::AnthropicResults(_) => "/v1/messages/batches/{id}/results",
        }
    }

    fn provider(&self) -> Provider {
        match self {
            Route::AnthropicBatches
            | Route::AnthropicBatch(_)
            | Route::AnthropicCancel(_)
            | Route::AnthropicResults(_) => Provider::Anthropic,
            _ => Provider::OpenAi,
        }
    }

    /// Whether `method` is one this route serves.
    fn allows(&self, method: &Method) -> bool {
        match self {
            Route::Upload | Route::OpenAiCancel(_) | Route::AnthropicCancel(_) => {
                method == Method::POST
            }
            Route::OpenAiBatches | Route::AnthropicBatches => {
                method == Method::POST || method == Method::GET
            }
            _ => method == Method::GET,
        }
    }
}

/// The Batch API route of `path`, if it is one.
pub(crate) fn route(path: &str) -> Option<Route> {
    let id = |rest: &str| (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string());
    if path == "/v1/files" {
        return Some(Route::Upload);
    }
    if path == "/v1/batches" {
        return Some(Route::OpenAiBatches);
    }
    if path == "/v1/messages/batches" {
        return Some(Route::AnthropicBatches);
    }
    if let Some(rest) = path.strip_prefix("/v1/files/") {
        return match rest.strip_suffix("/content") {
            Some(file) => id(file).map(Route::FileContent),
            None => id(rest).map(Route::File),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/batches/") {
        return match rest.strip_suffix("/cancel") {
            Some(batch) => id(batch).map(Route::OpenAiCancel),
            None => id(rest).map(Route::OpenAiBatch),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/messages/batches/") {
        if let Some(batch) = rest.strip_suffix("/cancel") {
            return id(batch).map(Route::AnthropicCancel);
        }
        if let Some(batch) = rest.strip_suffix("/results") {
            return id(batch).map(Route::AnthropicResults);
        }
        return id(rest).map(Route::AnthropicBatch);
    }
    None
}

/// Everything the Batch APIs keep, under one lock (held only for in-memory work). One per
/// server, beside its `Shared`, for the server's life (a stats reset keeps it).
#[derive(Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, files::File>,
    openai: Vec<openai::Batch>,
    anthropic: Vec<anthropic::Batch>,
    /// Batches created so far, both providers: the first `batch_expire_first` expire.
    created: u32,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new batch (either provider): its number from 0, and the share of its requests
    /// done when it expires, if it is one of the first `batch_expire_first`.
    fn count_created(&self, shared: &Shared) -> (u32, Option<f64>) {
        let number = {
            let mut inner = self.lock();
            inner.created += 1;
            inner.created - 1
        };
        let config = &shared.config;
        (
            number,
            (number < config.batch_expire_first).then_some(config.batch_expire_fraction),
        )
    }
}

/// What a handler answers: a status, a body and its content type.
pub(crate) struct Answer {
    status: u16,
    body: Bytes,
    content_type: &'static str,
}

impl Answer {
    fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Answer {
            status,
            body: body.into(),
            content_type: "application/json",
        }
    }

    fn ok(value: &serde_json::Value) -> Self {
        Answer::json(200, value.to_string())
    }
}

/// OpenAI's error body (`invalid_request_error`).
fn openai_error(status: u16, message: &str, param: Option<&str>, code: Option<&str>) -> Answer {
    let body = json!({"error": {"message": message, "type": "invalid_request_error",
        "param": param, "code": code}});
    Answer::json(status, body.to_string())
}

/// Anthropic's error body.
fn anthropic_error(status: u16, kind: &str, message: &str) -> Answer {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Answer::json(status, body.to_string())
}

/// Serves one Batch API request: method, auth (as on the chat paths: OpenAI `Authorization:
/// Bearer`, Anthropic `x-api-key` and `anthropic-version`), quota, then the route's handler,
/// on the files and batches of `store`.
pub(crate) async fn handle(
    shared: &Shared,
    store: &Store,
    route: Route,
    req: Request<Incoming>,
) -> Response<MockBody> {
    shared.stats.request(route.key());
    shared.stats.headers(req.headers());
    let provider = route.provider();
    if !route.allows(req.method()) {
        return error_response(shared, provider, &ApiError::MethodNotAllowed, None);
    }
    if let Err(err) = check_auth(&shared.config, provider, req.headers()) {
        return error_response(shared, provider, &err, None);
    }
    if shared.config.quota_exhausted {
        return error_response(shared, provider, &ApiError::Quota, None);
    }
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let answer = match (route, req.method() == Method::GET) {
        (Route::Upload, _) => files::upload(shared, store, req).await,
        (Route::File(id), _) => files::get(store, &id),
        (Route::FileContent(id), _) => {
            delay(shared).await;
            files::content(store, &id)
        }
        (Route::OpenAiBatches, true) => openai::list(shared, store, req.uri().query()),
        (Route::OpenAiBatches, false) => match read_json(req, super::server::MAX_BODY).await {
            Ok(body) => openai::create(shared, store, &body).await,
            Err(err) => return error_response(shared, provider, &err, None),
        },
        (Route::OpenAiBatch(id), _) => openai::get(shared, store, &id),
        (Route::OpenAiCancel(id), _) => openai::cancel(shared, store, &id),
        (Route::AnthropicBatches, true) => anthropic::list(store, req.uri().query(), &host),
        (Route::AnthropicBatches, false) => match read_json(req, anthropic::MAX_BYTES).await {
            Ok(body) => anthropic::create(shared, store, &body, &host).await,
            Err(err) => return error_response(shared, provider, &err, None),
        },
        (Route::AnthropicBatch(id), _) => anthropic::get(store, &id, &host),
        (Route::AnthropicCancel(id), _) => anthropic::cancel(shared, store, &id, &host),
        (Route::AnthropicResults(id), _) => {
            delay(shared).await;
            anthropic::results(store, &id)
        }
    };
    respond(shared, provider, answer)
}

/// A request body of at most `limit` bytes (413 beyond).
async fn read_json(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|_| ApiError::BodyTooLarge)
}

fn respond(shared: &Shared, provider: Provider, answer: Answer) -> Response<MockBody> {
    shared.stats.outcome(Outcome::Status(answer.status));
    let mut resp = Response::new(MockBody::full(answer.body));
    *resp.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    common_headers(headers, provider, &shared.next_id(), None);
    resp
}

/// `batch_delay_ms`, for crash tests (see `MockConfig::batch_delay_ms`).
async fn delay(shared: &Shared) {
    if shared.config.batch_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(shared.config.batch_delay_ms)).await;
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// When a batch was created: the instant its clock counts from and the wall time it shows.
#[derive(Debug, Clone, Copy)]
struct Born {
    at: Instant,
    unix: f64,
}

impl Born {
    fn now() -> Self {
        Born {
            at: Instant::now(),
            unix: unix_now(),
        }
    }

    /// Seconds since then.
    fn elapsed(&self) -> f64 {
        self.at.elapsed().as_secs_f64()
    }
}

/// One request of a batch with its answer (computed at creation, revealed when done).
#[derive(Debug, Clone)]
struct Item {
    custom_id: String,
    status: u16,
    body: String,
    /// The provider's id of this request's answer (OpenAI `batch_req_...`).
    id: String,
}

/// Answers every request of a new batch by the live path's rules and orders them as the
/// server processes them: shuffled, seeded by the server's seed and the batch's number.
fn answer_all(
    shared: &Shared,
    provider: Provider,
    requests: Vec<(String, Bytes)>,
    number: u32,
) -> Vec<Item> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(shared.config.seed ^ u64::from(number));
    order.shuffle(&mut rng);
    let mut slots: Vec<Option<(String, Bytes)>> = requests.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|i| slots[i].take())
        .map(|(custom_id, body)| {
            let (status, body) = super::server::batch_answer(shared, provider, &body);
            Item {
                custom_id,
                status,
                body,
                id: shared.next_id(),
            }
        })
        .collect()
}

/// The page of `ids` (newest first) a list asks for: `limit` items after the id `after`
/// (older), or, with `before`, the `limit` items just before it (newer); and whether more
/// remain beyond the page in its direction.
fn page<'a>(
    ids: &[&'a str],
    limit: usize,
    after: Option<&str>,
    before: Option<&str>,
) -> (Vec<&'a str>, bool) {
    if let Some(before) = before {
        let end = ids.iter().position(|id| *id == before).unwrap_or(0);
        let start = end.saturating_sub(limit);
        return (ids[start..end].to_vec(), start > 0);
    }
    let start = match after {
        Some(after) => ids
            .iter()
            .position(|id| *id == after)
            .map_or(ids.len(), |i| i + 1),
        None => 0,
    };
    let end = (start + limit).min(ids.len());
    (ids[start..end].to_vec(), end < ids.len())
}

/// The value of `name` in a query string, if given.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_stats_keys() {
        assert_eq!(route("/v1/files"), Some(Route::Upload));
        assert_eq!(
            route("/v1/files/file-1/content"),
            Some(Route::FileContent("file-1".into()))
        );
        assert_eq!(
            route("/v1/files/file-1"),
            Some(Route::File("file-1".into()))
        );
        assert_eq!(
            route("/v1/batches/b/cancel"),
            Some(Route::OpenAiCancel("b".into()))
        );
        assert_eq!(
            route("/v1/messages/batches/m/results"),
            Some(Route::AnthropicResults("m".into()))
        );
        assert_eq!(route("/v1/messages"), None);
        assert_eq!(route("/v1/chat/completions"), None);
        assert_eq!(route("/v1/files/a/b/c"), None);
        assert_eq!(route("/v1/batches/"), None);
        assert_eq!(
            route("/v1/messages/batches/x").unwrap().key(),
            "/v1/messages/batches/{id}"
        );
    }

    #[test]
    fn pages_go_both_ways() {
        let ids = ["e", "d", "c", "b", "a"];
        assert_eq!(page(&ids, 2, None, None), (vec!["e", "d"], true));
        assert_eq!(page(&ids, 2, Some("d"), None), (vec!["c", "b"], true));
        assert_eq!(page(&ids, 2, Some("b"), None), (vec!["a"], false));
        assert_eq!(page(&ids, 2, Some("zz"), None), (vec![], false));
        assert_eq!(page(&ids, 2, None, Some("b")), (vec!["d", "c"], true));
        assert_eq!(page(&ids, 5, None, Some("b")), (vec!["e", "d", "c"], false));
        assert_eq!(query_param(Some("limit=3&after=x"), "after"), Some("x"));
        assert_eq!(query_param(Some("limit=3"), "after"), None);
    }
}
