//! The batch executor: rows in through a bounded queue, concurrent paced requests with retries,
//! results out in chunks while the run goes on.

use crate::config::RunConfig;
use crate::error::{Error, ErrorType, Result};
use crate::failfast::FailFast;
use crate::limiter::{Answer, Limiter, Pacing, Response};
use crate::provider::{self, Messages, Params, PreparedRequest};
use crate::retry::{self, Backoff, Verdict};
use crate::row::RowResult;
use crate::transport::{self, AttemptError, Success};
use crate::wal::{self, Log};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
// observability
// The live counters live with the metrics that render them (no executor <-> metrics cycle).
pub use crate::metrics::Stats;
use crate::metrics::{self, MetricsSource};
use tracing::Instrument;

/// Rows waiting to be dispatched; enough to keep any concurrency window full.
const QUEUE_ROWS: usize = 4096;
/// Once the queue is full, the feeder waits for room for this many rows at once instead of
/// waking for each row the dispatcher takes (34,000 futex wake-ups per 100k rows before).
const SUBMIT_ROWS: usize = QUEUE_ROWS / 4;
/// Rows started but not yet handed to `poll`: when the consumer falls behind, dispatching
/// waits instead of piling results (and their input rows) up in memory.
const UNCONSUMED_ROWS: usize = 16_384;
/// A batch of results is handed out once its first row has waited this long, so results cross
/// to the consumer in batches rather than a wake-up per row (at 5,000 rows/s, ~100 rows).
const LINGER: Duration = Duration::from_millis(20);
/// ... unless this many are ready sooner.
const BATCH_ROWS: usize = 4096;
/// 429s and 529s do not use up a row's retries while some request of the run succeeded within
/// this long: the server is serving, just not this request yet. After that they count as usual,
/// so a server that only refuses still ends the run.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(300);
/// The backoff exponent of a rate-limited or overloaded retry stops growing here (at most 2 s
/// without a hint): the run is paced elsewhere, and the row should come back soon after.
const RATE_LIMIT_BACKOFF_STEPS: u32 = 3;

/// One row to send: its position in the run, its messages and its own params (over the run's).
pub struct Job {
    pub row: u64,
    pub messages: Messages,
    pub params: Option<Params>,
}

impl Job {
    /// A row from its payload (see [`provider::RowPayload`]).
    pub fn new(row: u64, payload: provider::RowPayload) -> Self {
        Self {
            row,
            messages: payload.messages,
            params: payload.params,
        }
    }
}

/// What a poll found.
pub enum Poll {
    Rows(Vec<RowResult>),
    /// Nothing arrived within the wait; the run goes on.
    Idle,
    /// Every submitted row has its result (or the run was stopped) and all were handed out.
    Done,
}

/// Results not yet handed out, when the first of them arrived, and the log every result is
/// written to first (under the same lock, so the log's order is the order of the polls).
#[derive(Default)]
struct Ready {
    rows: Vec<RowResult>,
    since: Option<std::time::Instant>,
    log: Option<Log>,
}

struct Shared {
    config: RunConfig,
    /// Where every row's request goes, with its headers: built once.
    target: Arc<provider::Target>,
    client: reqwest::Client,
    limiter: Limiter,
    backoff: Backoff,
    stats: Stats,
    cancel: CancellationToken,
    /// Set by a graceful stop: no new request starts; requests on the wire may finish.
    draining: CancellationToken,
    fatal: Mutex<Option<String>>,
    results: Mutex<Ready>,
    results_ready: Condvar,
    /// Permits for rows dispatched but not yet polled (see `UNCONSUMED_ROWS`).
    unconsumed: tokio::sync::Semaphore,
    finished: AtomicBool,
    fail_fast: FailFast,
    /// When the run began, and milliseconds from then to its latest success.
    born: Instant,
    last_success_ms: AtomicU64,
}

impl Shared {
    /// Hands a row's result out, after writing it to the log: called before the row's
    /// concurrency slot is given back, so the results a kill can lose are the slots' requests.
    fn push(&self, result: RowResult) {
        let record = self.config.log.is_some().then(|| wal::encode(&result));
        let mut ready = self.results.lock().unwrap();
        let mut failed = None;
        if let (Some(log), Some(record)) = (ready.log.as_mut(), record) {
            if let Err(err) = log.append(&record) {
                failed = Some(err);
                ready.log = None;
            }
        }
        ready.rows.push(result);
        // Wake the consumer for the first result of a batch and for a full batch only.
        if ready.rows.len() == 1 {
            ready.since = Some(std::time::Instant::now());
            self.results_ready.notify_all();
        } else if ready.rows.len() == BATCH_ROWS {
            self.results_ready.notify_all();
        }
        drop(ready);
        if let Some(err) = failed {
            let log = self
                .config
                .log
                .as_deref()
                .unwrap_or(std::path::Path::new(""));
            self.stop_fatal(format!(
                "cannot write the run's log ({}*.wal): {err}",
                log.display()
            ));
        }
    }

    /// Whether some request of the run succeeded recently (see `RATE_LIMIT_PATIENCE`).
    fn being_served(&self) -> bool {
        let last = Duration::from_millis(self.last_success_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last) < RATE_LIMIT_PATIENCE
    }

    /// Stops the whole run: auth and quota failures would repeat on every row.
    fn stop_fatal(&self, message: String) {
        let mut fatal = self.fatal.lock().unwrap();
        if fatal.is_none() {
            *fatal = Some(message);
        }
        self.draining.cancel();
        self.cancel.cancel();
    }
}

/// A running batch. Feed it with [`Executor::submit_blocking`], drain it with [`Executor::poll`].
pub struct Executor {
    shared: Arc<Shared>,
    input: Mutex<Option<mpsc::Sender<Job>>>,
    handle: tokio::runtime::Handle,
}

impl Executor {
    /// Starts the dispatcher on `handle`; it runs until the input is closed and drained or the
    /// run is cancelled.
    pub fn start(config: RunConfig, handle: &tokio::runtime::Handle) -> Result<Self> {
        let client = transport::build_client(config.concurrency);
        let target = config.target();
        let shared = Arc::new(Shared {
            target,
            limiter: Limiter::new(config.concurrency, config.rpm, config.tpm)
                .leased(config.granted),
            backoff: Backoff {
                base: Duration::from_millis(250),
                cap: Duration::from_secs(30),
            },
            client,
            stats: Stats::default(),
            cancel: CancellationToken::new(),
            draining: CancellationToken::new(),
            fatal: Mutex::new(None),
            results: Mutex::new(Ready {
                log: config.log.as_ref().map(Log::new),
                ..Ready::default()
            }),
            results_ready: Condvar::new(),
            unconsumed: tokio::sync::Semaphore::new(UNCONSUMED_ROWS),
            finished: AtomicBool::new(false),
            fail_fast: FailFast::new(config.fail_fast),
            born: Instant::now(),
            last_success_ms: AtomicU64::new(0),
            config,
        });
        if shared.config.log.is_some() {
            handle.spawn(sync_log(shared.clone()));
        }
        let (tx, rx) = mpsc::channel(QUEUE_ROWS);
        let dispatcher = shared.clone();
        handle.spawn(async move {
            dispatch(dispatcher.clone(), rx).await;
            dispatcher.finished.store(true, Ordering::Release);
            dispatcher.results_ready.notify_all();
        });
        Ok(Self {
            shared,
            input: Mutex::new(Some(tx)),
            handle: handle.clone(),
        })
    }

    /// Queues rows, blocking while the queue is full. Call from a non-runtime thread.
    pub fn submit_blocking(&self, jobs: Vec<Job>) -> Result<()> {
        let sender = self
            .input
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| Error::Stopped("the input of this run is already closed".into()))?;
        let mut left = jobs.len();
        let mut jobs = jobs.into_iter();
        while left > 0 {
            let n = left.min(SUBMIT_ROWS);
            let permits = self
                .handle
                .block_on(sender.reserve_many(n))
                .map_err(|_| Error::Stopped(self.stop_reason()))?;
            for (permit, job) in permits.zip(jobs.by_ref()) {
                permit.send(job);
            }
            self.shared
                .stats
                .submitted
                .fetch_add(n as u64, Ordering::Relaxed);
            left -= n;
        }
        Ok(())
    }

    /// No more rows will come; the run ends when the queued ones are done.
    pub fn close_input(&self) {
        self.input.lock().unwrap().take();
    }

    /// Takes the results that arrived, waiting up to `wait` for them. A batch is handed out once
    /// its first row has waited [`LINGER`] (or [`BATCH_ROWS`] are ready, or the run is over),
    /// or at the end of `wait` with what there is.
    pub fn poll(&self, wait: Duration) -> Poll {
        let deadline = std::time::Instant::now() + wait;
        let mut ready = self.shared.results.lock().unwrap();
        loop {
            let finished = self.shared.finished.load(Ordering::Acquire);
            let now = std::time::Instant::now();
            let due = match ready.since {
                Some(since) => since + LINGER,
                None => deadline,
            };
            if !ready.rows.is_empty()
                && (finished || now >= due.min(deadline) || ready.rows.len() >= BATCH_ROWS)
            {
                let rows = std::mem::take(&mut ready.rows);
                ready.since = None;
                self.shared.unconsumed.add_permits(rows.len());
                return Poll::Rows(rows);
            }
            if finished {
                return Poll::Done;
            }
            if now >= deadline {
                return Poll::Idle;
            }
            let until = due.min(deadline);
            ready = self
                .shared
                .results_ready
                .wait_timeout(ready, until - now)
                .unwrap()
                .0;
        }
    }

    /// Seals the log's current segment (see `wal.rs`): its path, once every row in it was
    /// pushed for `poll` to hand out; `None` when there is no log or nothing since the last roll.
    pub fn roll_log(&self) -> Option<std::path::PathBuf> {
        self.shared.results.lock().unwrap().log.as_mut()?.roll()
    }

    /// Stops dispatching and abandons in-flight requests; their rows get no result.
    pub fn cancel(&self) {
        self.shared.draining.cancel();
        self.shared.cancel.cancel();
        self.close_input();
    }

    /// A graceful stop: queued rows and rows waiting for their turn or a retry are left
    /// unsent (no result), requests already on the wire finish and report as usual.
    pub fn drain(&self) {
        self.shared.draining.cancel();
        self.close_input();
    }

    /// The message of the failure that stopped the run (auth, quota), key redacted.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared.fatal.lock().unwrap().clone()
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    // observability
    /// The run's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        metrics::render(&self.shared.stats, self.shared.limiter.concurrency())
    }

    /// A renderer of [`Executor::metrics_text`] that outlives this handle, for a metrics server.
    pub fn metrics_source(&self) -> MetricsSource {
        Self::labelled_metrics_source(&[(self, metrics::Labels::new())])
    }

    /// A renderer of several executors' metrics in one exposition, each sample carrying its
    /// executor's labels: one endpoint for a model matrix.
    pub fn labelled_metrics_source(runs: &[(&Executor, metrics::Labels)]) -> MetricsSource {
        let runs: Vec<(Arc<Shared>, metrics::Labels)> = runs
            .iter()
            .map(|(executor, labels)| (executor.shared.clone(), labels.clone()))
            .collect();
        std::sync::Arc::new(move || {
            let views: Vec<metrics::Run<'_>> = runs
                .iter()
                .map(|(shared, labels)| metrics::Run {
                    labels,
                    stats: &shared.stats,
                    concurrency: shared.limiter.concurrency(),
                })
                .collect();
            metrics::render_runs(&views)
        })
    }

    /// The concurrency window.
    pub fn concurrency(&self) -> usize {
        self.shared.limiter.concurrency()
    }

    /// Where the run's pace comes from now (the server's stated limit, a learned one, or none).
    pub fn pacing(&self) -> Pacing {
        self.shared.limiter.pacing()
    }

    /// A lease of permits from outside (a run configured `granted`); false otherwise.
    pub fn grant(&self, requests_per_second: f64, tokens_per_second: f64, seconds: f64) -> bool {
        self.shared
            .limiter
            .grant(requests_per_second, tokens_per_second, seconds)
    }

    /// Answers and 429s since the last call, for a pace learned outside (a `granted` run).
    pub fn take_answers(&self) -> (u64, u64) {
        self.shared.limiter.take_answers()
    }

    fn stop_reason(&self) -> String {
        self.fatal_error()
            .unwrap_or_else(|| "the run was cancelled".to_string())
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shared.draining.cancel();
        self.shared.cancel.cancel();
    }
}

/// Fsyncs the log's current segment every [`wal::SYNC_EVERY`] while records arrive, outside the
/// results' lock: what a power loss can cost is bounded by that interval.
async fn sync_log(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(wal::SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let file = shared
            .results
            .lock()
            .unwrap()
            .log
            .as_mut()
            .and_then(Log::to_sync);
        if let Some(file) = file {
            if let Ok(Err(err)) = tokio::task::spawn_blocking(move || file.sync_data()).await {
                tracing::warn!(error = %err, "cannot fsync the run's log");
            }
        }
        if shared.finished.load(Ordering::Acquire) {
            return;
        }
    }
}

async fn dispatch(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shared.draining.cancelled() => break,
            permit = shared.unconsumed.acquire() => permit.expect("never closed").forget(),
        }
        let slot = tokio::select! {
            _ = shared.draining.cancelled() => break,
            slot = shared.limiter.acquire_slot() => slot,
        };
        let job = tokio::select! {
            _ = shared.draining.cancelled() => break,
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        let worker = shared.clone();
        tasks.spawn(async move {
            let _slot = slot;
            match run_row(&worker, job).await {
                Some(result) => worker.push(result),
                None => worker.unconsumed.add_permits(1),
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Release the queue at once so a blocked submitter sees the stop.
    drop(rx);
    while tasks.join_next().await.is_some() {}
}

/// Runs one row to its outcome; `None` when the run was cancelled before it finished.
async fn run_row(shared: &Shared, job: Job) -> Option<RowResult> {
    let config = &shared.config;
    let row_params = job.params.as_ref();
    let request = provider::prepare_row(
        config.provider,
        &shared.target,
        &config.params,
        &job.messages,
        row_params,
    );
    let estimate =
        provider::estimate_row_tokens(config.provider, &job.messages, &config.params, row_params);
    let request_hash = provider::request_hash(&request.body);
    let stats = &shared.stats;
    stats.in_flight.fetch_add(1, Ordering::Relaxed);
    // observability: one span per row
    let span = tracing::info_span!(
        "request",
        row = job.row,
        provider = config.provider.as_str(),
        model = %config.params.model,
    );
    let mut hooks = RowAttempts {
        shared,
        request: &request,
        estimate,
        limited_streak: 0,
        first_sent_us: None,
    };
    let outcome = retry::until_settled(&shared.backoff, config.max_retries, &mut hooks)
        .instrument(span)
        .await;
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    let settled = outcome?;
    let (attempts, latency, result) = (settled.attempts, settled.latency, settled.result);
    let mut row = RowResult {
        row: job.row,
        latency_ms: latency.as_secs_f64() * 1000.0,
        ttft_ms: None,
        attempts,
        http_status: None,
        error_type: None,
        error: None,
        started_at_us: hooks.first_sent_us.unwrap_or_else(now_us),
        finished_at_us: now_us(),
        request_hash,
        ..RowResult::default()
    };
    stats.done.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(success) => {
            stats.ok.fetch_add(1, Ordering::Relaxed);
            shared.fail_fast.ok();
            let completion = success.completion;
            if let Some(n) = completion.prompt_tokens {
                stats.prompt_tokens.fetch_add(n, Ordering::Relaxed);
            }
            if let Some(n) = completion.completion_tokens {
                stats.completion_tokens.fetch_add(n, Ordering::Relaxed);
            }
            row.set_completion(completion, success.http_status);
            row.ttft_ms = success.ttft.map(|d| d.as_secs_f64() * 1000.0);
        }
        Err(err) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let message = config.api_key.redact(&err.message);
            if let Some(stop) = shared.fail_fast.failed(err.kind, err.http_status, &message) {
                tracing::error!(cause = err.kind.as_str(), "run stopped: fail fast");
                shared.stop_fatal(stop);
            }
            row.set_error(err.kind, err.http_status, message);
        }
    }
    Some(row)
}

/// The executor's part of a row's retry loop ([`retry::until_settled`]).
///
/// A 429 or 529 does not use up the row's `max_retries` while the run is being served (some
/// request succeeded within [`RATE_LIMIT_PATIENCE`]): pacing, not the row, deals with limits.
struct RowAttempts<'a> {
    shared: &'a Shared,
    request: &'a PreparedRequest,
    /// Tokens the request is charged for its turn.
    estimate: u32,
    /// The current streak of 429/529s.
    limited_streak: u32,
    /// When the first attempt left (after waiting for its turn), microseconds since the epoch.
    first_sent_us: Option<i64>,
}

impl retry::Hooks for RowAttempts<'_> {
    async fn turn(&mut self) -> bool {
        tokio::select! {
            _ = self.shared.draining.cancelled() => false,
            _ = self.shared.limiter.wait_turn(self.estimate) => true,
        }
    }

    async fn send(&mut self, attempt: u32) -> Option<std::result::Result<Success, AttemptError>> {
        let (shared, config) = (self.shared, &self.shared.config);
        self.first_sent_us.get_or_insert_with(now_us);
        shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = shared.cancel.cancelled() => None,
            outcome = transport::send(
                &shared.client,
                config.provider,
                self.request,
                config.params.stream,
                config.timeout,
            ).instrument(tracing::debug_span!("attempt", attempt)) => Some(outcome),
        }
    }

    fn answered(
        &mut self,
        attempt: u32,
        sent: Instant,
        latency: Duration,
        outcome: &std::result::Result<Success, AttemptError>,
    ) {
        let shared = self.shared;
        // observability
        shared.stats.latency.observe(latency);
        let latency_ms = latency.as_secs_f64() * 1000.0;
        match outcome {
            Ok(ok) => tracing::debug!(attempt, status = ok.http_status, latency_ms, "answered"),
            Err(e) => tracing::debug!(
                attempt,
                status = e.http_status,
                cause = e.kind.as_str(),
                latency_ms,
                "failed"
            ),
        }
        shared.limiter.on_response(&pacing_signal(sent, outcome));
        if outcome.is_ok() {
            let ms = shared.born.elapsed().as_millis() as u64;
            shared.last_success_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    fn failed(&mut self, err: &AttemptError) -> Verdict {
        let shared = self.shared;
        let limited = matches!(err.kind, ErrorType::RateLimited | ErrorType::Overloaded);
        if limited {
            shared.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            self.limited_streak += 1;
        } else {
            self.limited_streak = 0;
        }
        if err.kind.is_fatal() {
            let status = err
                .http_status
                .map(|s| format!(" (HTTP {s})"))
                .unwrap_or_default();
            tracing::error!(
                status = err.http_status,
                cause = err.kind.as_str(),
                "run stopped"
            );
            shared.stop_fatal(format!(
                "{}{status}: {}",
                err.kind.as_str(),
                shared.config.api_key.redact(&err.message)
            ));
            return Verdict::Abandon;
        }
        Verdict::Usual {
            counts: !(limited && shared.being_served()),
            step: limited.then(|| (self.limited_streak - 1).min(RATE_LIMIT_BACKOFF_STEPS)),
        }
    }

    async fn pause(&mut self, err: &AttemptError, delay: Duration) -> bool {
        let stats = &self.shared.stats;
        stats.retries.fetch_add(1, Ordering::Relaxed);
        stats.retries_by_cause.add(err.kind); // observability
        stats.retrying.fetch_add(1, Ordering::Relaxed);
        let cancelled = tokio::select! {
            _ = self.shared.draining.cancelled() => true,
            _ = tokio::time::sleep(delay) => false,
        };
        stats.retrying.fetch_sub(1, Ordering::Relaxed);
        !cancelled
    }
}

/// What an attempt's outcome tells the limiter.
fn pacing_signal(sent: Instant, outcome: &std::result::Result<Success, AttemptError>) -> Response {
    match outcome {
        Ok(success) => Response {
            sent,
            answer: Answer::Ok,
            hint: None,
            limits: success.limits,
        },
        Err(err) => Response {
            sent,
            answer: match (err.http_status, err.kind) {
                (None, _) => Answer::NoResponse,
                (Some(_), ErrorType::RateLimited) => Answer::RateLimited,
                (Some(_), _) => Answer::OtherStatus,
            },
            hint: err.retry_after,
            limits: err.limits,
        },
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockConfig, MockServer};
    use crate::runtime::runtime;

    fn job(row: u64) -> Job {
        let messages =
            Messages::from_json(format!(r#"[{{"role":"user","content":"q{row}"}}]"#)).unwrap();
        Job {
            row,
            messages,
            params: None,
        }
    }

    /// An executor sending to a fresh mock server (kept alive by the returned handle).
    fn executor_on_mock(concurrency: usize) -> (MockServer, Arc<Executor>) {
        let server =
            MockServer::start(MockConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let config = RunConfig::from_json(&format!(
            r#"{{"provider":"openai","api_base":"http://{}/v1","api_key":"mock-key","model":"m","concurrency":{concurrency}}}"#,
            server.local_addr()
        ))
        .unwrap();
        let executor = Arc::new(Executor::start(config, runtime().handle()).unwrap());
        (server, executor)
    }

    /// Polls until the run is over; the number of results received.
    fn drain(executor: &Executor) -> u64 {
        let mut received = 0;
        loop {
            match executor.poll(Duration::from_millis(200)) {
                Poll::Rows(rows) => received += rows.len() as u64,
                Poll::Idle => {}
                Poll::Done => return received,
            }
        }
    }

    #[test]
    fn dispatching_waits_for_a_consumer_that_falls_behind() {
        let (_server, executor) = executor_on_mock(64);
        let total = UNCONSUMED_ROWS as u64 + 3_000;
        let feeder = {
            let executor = executor.clone();
            std::thread::spawn(move || {
                executor
                    .submit_blocking((0..total).map(job).collect())
                    .unwrap();
                executor.close_input();
            })
        };
        // Nobody polls: the run must stop at the cap instead of piling results up.
        let mut done = 0;
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(25));
            let now = executor.stats().done.load(Ordering::Relaxed);
            if now == done && now > 0 {
                break;
            }
            done = now;
        }
        assert_eq!(done, UNCONSUMED_ROWS as u64);
        // Once polled, the rest follows.
        let received = drain(&executor);
        feeder.join().unwrap();
        assert_eq!(received, total);
    }

    /// This thread's voluntary context switches: each time it slept waiting for something.
    #[cfg(target_os = "linux")]
    fn sleeps_of_this_thread() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_queue_wakes_the_feeder_once_per_batch_of_rows_not_per_row() {
        let (_server, executor) = executor_on_mock(8);
        let total = (QUEUE_ROWS + 8 * SUBMIT_ROWS) as u64;
        let feeder = {
            let executor = executor.clone();
            std::thread::spawn(move || {
                let before = sleeps_of_this_thread();
                executor
                    .submit_blocking((0..total).map(job).collect())
                    .unwrap();
                executor.close_input();
                sleeps_of_this_thread() - before
            })
        };
        let received = drain(&executor);
        let sleeps = feeder.join().unwrap();
        assert_eq!(received, total);
        // 8 batches beyond the queue's first fill; a wake-up per row would be thousands.
        assert!(
            sleeps <= 40,
            "the feeder slept {sleeps} times for {total} rows"
        );
    }

    /// Runs `payloads` on a fresh mock with `config` (JSON merged over an OpenAI run's) and
    /// returns the results in row order, with the mock's stats.
    fn run_on_mock(
        config: serde_json::Value,
        payloads: &[&str],
    ) -> (Vec<RowResult>, crate::mock::MockStats) {
        let server =
            MockServer::start(MockConfig::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut value = serde_json::json!({"provider": "openai",
            "api_base": format!("http://{}/v1", server.local_addr()),
            "api_key": "mock-key", "model": "gpt-4o-mini", "concurrency": 1, "max_retries": 0});
        for (key, v) in config.as_object().unwrap() {
            value[key] = v.clone();
        }
        if value["provider"] == "anthropic" {
            value["api_base"] = format!("http://{}", server.local_addr()).into();
        }
        let executor = Executor::start(
            RunConfig::from_json(&value.to_string()).unwrap(),
            runtime().handle(),
        )
        .unwrap();
        let jobs = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Job::new(
                    i as u64,
                    provider::RowPayload::from_json(p.to_string()).unwrap(),
                )
            })
            .collect();
        executor.submit_blocking(jobs).unwrap();
        executor.close_input();
        let mut rows = Vec::new();
        loop {
            match executor.poll(Duration::from_millis(200)) {
                Poll::Rows(batch) => rows.extend(batch),
                Poll::Idle => {}
                Poll::Done => break,
            }
        }
        rows.sort_by_key(|r| r.row);
        (rows, server.stats())
    }

    #[test]
    fn params_reach_the_server_and_rows_override_them() {
        let (rows, stats) = run_on_mock(
            serde_json::json!({"params": {"seed": 1, "top_p": 0.5},
                "headers": {"x-title": "evals", "x-gw-key": "hidden-123456"}}),
            &[
                r#"[{"role":"user","content":"plain"}]"#,
                r#"{"messages":[{"role":"user","content":"own"}],"params":{"seed":2,"model":"o4-mini","max_completion_tokens":50}}"#,
            ],
        );
        assert!(rows.iter().all(|r| r.ok), "{rows:?}");
        assert_eq!(stats.params["seed"], 2);
        assert_eq!(stats.params["top_p"], 2);
        assert_eq!(stats.params["max_completion_tokens"], 1);
        assert_eq!(stats.params.get("max_tokens"), None);
        assert_eq!(stats.headers["x-title"], 2);
        assert_eq!(stats.headers["x-gw-key"], 2);
        // The row that named a reasoning model got its reasoning tokens counted.
        assert_eq!(rows[0].reasoning_tokens, None);
        assert_eq!(rows[1].reasoning_tokens, Some(2));
        assert_eq!(rows[1].completion_tokens, Some(4));
        assert_ne!(rows[0].request_hash, rows[1].request_hash);
    }

    #[test]
    fn a_reasoning_model_run_with_max_tokens_succeeds() {
        for stream in [false, true] {
            let (rows, stats) = run_on_mock(
                serde_json::json!({"model": "gpt-5-mini", "max_tokens": 256, "stream": stream}),
                &[r#"[{"role":"user","content":"why"}]"#],
            );
            assert!(rows[0].ok, "{:?}", rows[0].error);
            assert_eq!(stats.params["max_completion_tokens"], 1);
            assert_eq!(rows[0].reasoning_tokens, Some(2));
        }
    }

    #[test]
    fn tool_calls_cache_and_raw_land_in_the_result() {
        let tools = serde_json::json!([{"type": "function", "function": {"name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
        for stream in [false, true] {
            for provider in ["openai", "anthropic"] {
                let (tools, system) = if provider == "openai" {
                    (tools.clone(), serde_json::json!("Be brief please."))
                } else {
                    (
                        serde_json::json!([{"name": "lookup", "input_schema": tools[0]["function"]["parameters"]}]),
                        serde_json::json!("Be brief please."),
                    )
                };
                let (rows, _) = run_on_mock(
                    serde_json::json!({"provider": provider, "stream": stream, "keep_raw": true,
                        "system": system, "params": {"tools": tools}}),
                    &[
                        r#"[{"role":"user","content":"please lookup this"}]"#,
                        r#"[{"role":"user","content":"no tool here"}]"#,
                    ],
                );
                let what = format!("{provider} stream={stream}");
                assert!(rows.iter().all(|r| r.ok), "{what}: {rows:?}");
                let calls: serde_json::Value =
                    serde_json::from_str(rows[0].tool_calls.as_deref().expect("tool calls"))
                        .unwrap();
                assert_eq!(calls[0]["function"]["name"], "lookup", "{what}");
                assert_eq!(calls[0]["type"], "function");
                let arguments: serde_json::Value =
                    serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap())
                        .unwrap();
                assert_eq!(arguments, serde_json::json!({"q": ""}), "{what}");
                assert_eq!(rows[1].tool_calls, None);
                assert_eq!(rows[1].output.as_deref(), Some("Echo: no tool here"));
                // The system prompt (3 words) was cached after the first answer.
                let cached = |r: &RowResult| r.cached_prompt_tokens.unwrap_or(0);
                assert_eq!(cached(&rows[0]) + cached(&rows[1]), 3, "{what}");
                if provider == "anthropic" {
                    assert_eq!(rows[0].cache_write_tokens, Some(3), "{what}");
                    // The whole prompt, as OpenAI counts it: input + cache read + cache write.
                    assert_eq!(rows[0].prompt_tokens, Some(6), "{what}");
                    assert_eq!(rows[1].prompt_tokens, Some(6), "{what}");
                }
                let raw: serde_json::Value =
                    serde_json::from_str(rows[1].raw.as_deref().expect("raw")).unwrap();
                let text = if provider == "openai" {
                    raw["choices"][0]["message"]["content"].clone()
                } else {
                    raw["content"][0]["text"].clone()
                };
                assert_eq!(text, "Echo: no tool here", "{what}: {raw}");
            }
        }
    }
}
