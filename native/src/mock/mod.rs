//! The project's own mock OpenAI/Anthropic server: deterministic replies, latency, rate limits, faults.
//!
//! Routes: `POST /v1/chat/completions` (OpenAI), `POST /v1/messages` (Anthropic),
//! `POST /openai/deployments/{deployment}/chat/completions?api-version=V` (Azure OpenAI: the
//! `api-key` header, OpenAI's bodies; without `api-version` Azure's 404 `Resource not found`;
//! the model is the body's, else the deployment), the Batch APIs (below), and the control endpoints `GET /_mock/stats`
//! ([`MockStats`] as JSON), `POST /_mock/reset`, `GET /health`. Checks run in this order:
//! (Azure) api-version (404) → auth (401) → quota → body validation (400) → overload episode
//! (Anthropic 529, OpenAI 503) → rate limit (429) → latency → random fault → bad marker (400)
//! → reply (see [`reply_text`]).
//!
//! Beyond the echo, the mock answers as the real APIs do:
//! - **Reasoning models** (`provider::is_reasoning_model`: o1, o3, o4, gpt-5 and variants):
//!   `max_tokens` is refused with OpenAI's 400 (`unsupported_parameter`, param `max_tokens`),
//!   and so is a temperature other than 1 (`unsupported_value`, param `temperature`);
//!   `max_completion_tokens` is taken. They report `completion_tokens_details.reasoning_tokens`
//!   equal to the words of the visible reply, and `completion_tokens` counts both.
//! - **Prompt cache**: a system prompt (OpenAI: the system and developer messages; Anthropic:
//!   `system`) already answered once by this server (since it started; a stats reset keeps it)
//!   is read from the cache: its words are reported as `prompt_tokens_details.cached_tokens`
//!   (OpenAI) or `cache_read_input_tokens` (Anthropic). On Anthropic its first answer reports
//!   them as `cache_creation_input_tokens`. Anthropic's `input_tokens` is the rest of the prompt,
//!   as the real API counts it; OpenAI's `prompt_tokens` includes the cached ones. The details
//!   objects of OpenAI's usage appear only when non-zero (reasoning models: always).
//! - **Tools**: with `tools`, a tool whose name occurs in the last user message is called
//!   (the first such, in the request's order; `tool_choice` "required"/`any` calls the first tool
//!   when none is named, a named choice always calls that tool, "none" never calls one). The
//!   arguments are the minimal instance of the tool's schema (`schema.rs`). OpenAI: a message
//!   with `tool_calls` and finish reason `tool_calls`; Anthropic: one `tool_use` block and stop
//!   reason `tool_use`. Completion tokens: the words of the arguments' JSON text.
//! - **Structured output**: OpenAI `response_format` `{type: json_schema, json_schema: {schema}}`
//!   and Anthropic `output_config.format` (or the beta's `output_format`) `{type: json_schema,
//!   schema}` get the schema's minimal instance as the text (`json_object`: `{}`). A tool call
//!   wins over it.
//! - **`n`** (OpenAI): `n` choices, every one the same answer (choice i's text is the usual
//!   echo, or the tool call or structured output the request gets); `completion_tokens` counts
//!   them all (n × the reply's words). Streamed, every chunk is sent once per choice, one choice
//!   per chunk, the highest index first. `n` outside 1..=128 is refused with OpenAI's 400
//!   (`integer_below_min_value` / `integer_above_max_value`, param `n`).
//! - **`logprobs: true`** (OpenAI, with `top_logprobs` 0..=20): each choice carries
//!   `logprobs: {"content": [...], "refusal": null}` with one entry per word of the reply (its
//!   stream piece, the whitespace before it included, as `token`; entry k has `logprob`
//!   -(k+1)/100, `bytes` the token's UTF-8 and `top_logprobs` the token itself then "alt1",
//!   "alt2", ... each 1 lower); `content` is null for a tool call. Streamed, each word's chunk
//!   carries its own entry. `top_logprobs` without `logprobs` is a 400.
//! - **Stats**: `params` counts the top-level body fields each request carried beyond `model`
//!   and `messages`; `headers` counts non-standard request header names (never values).
//! - `stream_as_json`: streaming requests are answered with a whole JSON body, as some gateways
//!   do.
//!
//! **Batch APIs** (`batches/`; `listen.rs` sends their paths there, every other path to
//! `server.rs`): OpenAI's `POST /v1/files` (multipart/form-data: `purpose`,
//! `file`; up to 512 MB), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `POST
//! /v1/batches`, `GET /v1/batches?limit=&after=`, `GET /v1/batches/{id}`, `POST
//! /v1/batches/{id}/cancel`; Anthropic's `POST /v1/messages/batches`, `GET
//! /v1/messages/batches?limit=&after_id=&before_id=`, `GET /v1/messages/batches/{id}`, `POST
//! .../cancel`, `GET .../results`. Checks on these paths: method (405) → auth as on the chat
//! paths (401; Anthropic `anthropic-version` 400) → quota → the request's own checks (400 in the
//! provider's shape; 404 for an unknown id or input file; 409 cancelling an ended OpenAI batch,
//! 400 an ended Anthropic one) → `batch_delay_ms` → the work → `batch_delay_ms` again. Lists
//! are newest first.
//! - OpenAI validates a batch's input file as its `validating` does: each line JSON
//!   (`invalid_json_line`), with `custom_id`, `method`, `url`, `body`
//!   (`missing_required_parameter`), `method` POST (`invalid_value`), `url` the batch's endpoint
//!   (`invalid_url`), no `body.stream` (`streaming_unsupported`), a `body.model` and
//!   `body.messages` (`invalid_request`), one model for the file (`mismatched_model`), unique
//!   `custom_id` (`duplicate_custom_id`); at most 50,000 lines (`too_many_requests`) and 200 MB
//!   (`file_too_large`). A file that fails makes the batch `failed` after validating, with
//!   `errors.data` ({code, message, param, line}, one per bad line). The endpoint must be
//!   `/v1/chat/completions` (`/v1/completions`, `/v1/embeddings`, `/v1/responses` are refused
//!   as not served by the mock), the window `24h`, metadata at most 16 string pairs (keys ≤ 64,
//!   values ≤ 512 characters), the input file one uploaded with purpose `batch` (an upload with
//!   that purpose must be JSONL: its first line JSON).
//! - Anthropic refuses at once (400 `invalid_request_error`): no or empty `requests`, more than
//!   100,000, a `custom_id` not matching `^[a-zA-Z0-9_-]{1,64}$` or repeated, `params` not an
//!   object; a body over 256 MB is a 413. Each request's `params` is validated as `/v1/messages`
//!   validates a body, but, as Anthropic documents, asynchronously: a refusal is that request's
//!   `errored` result.
//! - Each request of a batch is answered when the batch is created, by the live path
//!   (`server::batch_answer`: validation, the random fault drawn as a 5xx, the bad marker's 400,
//!   the reply; no rate limit, overload episode or latency), in an order shuffled with `seed`.
//!   The batch reveals the answers on the clock of `batch_seconds` ([`MockConfig`]), computed
//!   from the elapsed time on each look. OpenAI: `validating` (a tenth), `in_progress`
//!   (`request_counts` growing evenly), `finalizing` (the last twentieth), `completed`; its
//!   output file (one line per 2xx answer: `{id: "batch_req_...", custom_id, response:
//!   {status_code, request_id, body}, error: null}`) and error file (non-2xx answers, same
//!   shape; requests never run: `{response: null, error: {code, message}}`) are written when it
//!   ends, in the shuffled order; a file with no line is not written (its id stays null).
//!   Anthropic: `in_progress`, then `ended` with `results_url` (this server's URL, from the
//!   request's `Host`) serving JSONL `{custom_id, result: {type: succeeded, message} |
//!   {type: errored, error: {type: "error", error: {type, message}}} | {type: expired} |
//!   {type: canceled}}`.
//! - Cancel: `cancelling`/`canceling` for a tenth of `batch_seconds`, then `cancelled`/`ended`.
//!   The requests done by the cancel keep their answers; OpenAI puts those in the output (2xx)
//!   and error files, as its docs say ("partial results (if any) available in the output
//!   file"), and the requests never run in the error file as `batch_cancelled` (request_counts
//!   count neither); Anthropic's are `canceled` results.
//! - Expiry: the first `batch_expire_first` batches (both providers counted together) expire at
//!   their end with `batch_expire_fraction` of their requests done: OpenAI `expired` (with
//!   `expired_at`), the rest in the error file as `batch_expired` ("This request could not be
//!   executed before the completion window expired."); Anthropic `ended` with `expired` results
//!   and `request_counts.expired`.
//! - `batch_delay_ms`: a create or upload waits, does its work, waits again; a download
//!   waits once. hyper drops a request's handler when its client's connection closes while the
//!   handler waits (tested in `batch_tests.rs`): a client killed during the first wait created
//!   nothing; one killed during the second created a batch (or file) it never heard of.
//! - Files and batches live as long as the server (a stats reset keeps them). Stats:
//!   `files_uploaded`, `batches_created`, `batch_requests`, `batches_cancelled`; `by_path` counts
//!   these paths with ids collapsed (`/v1/batches/{id}`, ...). A batch's requests are not
//!   counted as HTTP requests, but their `params` (and `prompts`) are.
//!
//! Rate limits are enforced per second and stated per minute, as the providers do: with R
//! requests per second in force the headers say a limit of 60 × R (see [`MockConfig`]). The
//! rate may follow a schedule and the server may be overloaded for episodes; both count time
//! from the first API request.

mod anthropic;
mod batches;
mod body;
mod config;
mod delay;
mod errors;
mod faults;
mod listen;
mod openai;
mod ratelimit;
mod reply;
mod request;
mod schema;
mod server;
mod stats;

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;

pub use config::{FaultKind, MockConfig};
pub use reply::reply_text;
pub use stats::MockStats;

use batches::Store;
use server::Shared;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Pending connections the listener queues; benchmarks open many at once.
const BACKLOG: u32 = 1024;
/// The shared runtime's worker thread name (set in `crate::runtime`).
const RUNTIME_THREAD: &str = "prompt-runner";
/// How long [`MockServer::stop`] waits for the listener to close.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A running mock server on the shared runtime. Stops on [`MockServer::stop`] or drop.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// Set by the accept task once the listener is dropped, so `stop` can wait for the port.
    closed: Arc<(Mutex<bool>, Condvar)>,
}

impl MockServer {
    /// Binds `addr` and serves on [`crate::runtime::runtime`]; `127.0.0.1:0` picks a free port.
    /// Callable from any thread, async or not. Fails on a bind error or an invalid config.
    pub fn start(config: MockConfig, addr: SocketAddr) -> std::io::Result<MockServer> {
        let kinds = config.validate()?;
        let rt = crate::runtime::runtime();
        let listener = {
            // Registering the socket with the reactor needs the runtime's context.
            let _guard = rt.enter();
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(BACKLOG)?
        };
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, kinds));
        // The Batch APIs' files and batches, beside `shared`, for the server's life.
        let store = Arc::new(Store::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let closed = Arc::new((Mutex::new(false), Condvar::new()));
        let task_shared = shared.clone();
        let task_closed = closed.clone();
        rt.spawn(async move {
            listen::serve(listener, task_shared, store, shutdown_rx).await;
            let (done, cv) = &*task_closed;
            *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        });
        tracing::debug!(%addr, "mock server listening");
        Ok(MockServer {
            addr,
            shared,
            shutdown,
            closed,
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats.snapshot()
    }

    /// Zeroes the counters (as `POST /_mock/reset` does).
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// Stops accepting and closes open connections. Idempotent; also runs on drop. Waits
    /// (briefly, bounded) until the listener is closed, so the port refuses connections after.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
        // On a worker of the shared runtime, blocking could starve the very task that closes
        // the listener (e.g. a one-core machine); there the close just happens momentarily.
        if std::thread::current().name() == Some(RUNTIME_THREAD) {
            return;
        }
        let (done, cv) = &*self.closed;
        let guard = done.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cv.wait_timeout_while(guard, STOP_WAIT, |done| !*done);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish()
    }
}
