//! PyO3 bindings: every `#[pymethods]` of the module `runner._native`, and the one place that
//! maps native errors to Python exceptions.

use crate::adaptive::AdaptiveRate;
use crate::batch;
use crate::batch_api::{self, BatchAnswer};
use crate::client::{
    ClientConfig, ClientError as NativeClientError, ModelClient as NativeModelClient, Response,
};
use crate::config::RunConfig;
use crate::error::Error;
use crate::executor::{Executor as NativeExecutor, Job, Poll};
use crate::limiter::Pacing;
use crate::metrics::{self, MetricsServer as NativeMetricsServer};
use crate::mock::{MockConfig, MockServer as NativeMockServer};
use crate::provider::{self, Message, RowPayload};
use crate::runtime::runtime;
use crate::wal;
use arrow_array::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{
    make_array, Array, ArrayRef, Int64Array, LargeStringArray, RecordBatch, StructArray,
};
use pyo3::exceptions::PyValueError;
use pyo3::import_exception;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCapsule, PyDict};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use tokio::time::Instant;

// Errors: the one place native failures become Python exceptions. The classes are
// `runner.errors`' (subclasses of `RunnerError`), re-exported by this module under the same
// names (`runner._native.NativeError`, ...).
import_exception!(runner.errors, NativeError);
import_exception!(runner.errors, ConfigError);
import_exception!(runner.errors, RunStopped);
import_exception!(runner.errors, ClientError);

/// The crate's errors: a refused configuration, a stopped run, a failed I/O operation.
impl From<Error> for PyErr {
    fn from(err: Error) -> Self {
        match err {
            Error::Config(msg) => ConfigError::new_err(msg),
            Error::Io(err) => NativeError::new_err(err.to_string()),
            Error::Stopped(msg) => RunStopped::new_err(msg),
        }
    }
}

/// A configuration refused here, before it reached the crate (a mock config, an address).
fn config_error(message: String) -> PyErr {
    ConfigError::new_err(message)
}

/// Any other native failure (a server that cannot bind, an Arrow export, a log that cannot be
/// read).
fn native_error(message: impl std::fmt::Display) -> PyErr {
    NativeError::new_err(message.to_string())
}

/// A `ClientError` carrying the failure's `error_type`, `status`, `message` and `attempts`.
fn client_error(err: NativeClientError) -> PyErr {
    ClientError::new_err((
        err.to_string(),
        err.kind.as_str(),
        err.status,
        err.message,
        err.attempts,
    ))
}

/// A running batch on the shared tokio runtime; every blocking call releases the GIL.
#[pyclass(module = "runner._native", frozen)]
struct Executor {
    inner: NativeExecutor,
}

#[pymethods]
impl Executor {
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        let config = RunConfig::from_json(config_json)?;
        let inner = NativeExecutor::start(config, runtime().handle())?;
        Ok(Self { inner })
    }

    /// Queues rows (`rows[i]` is the position of `payloads[i]`: a JSON array of messages, or
    /// an object `{"messages": [...], "params": {...}}` whose params override the run's for
    /// that row); blocks while the queue is full.
    fn submit(&self, py: Python<'_>, rows: Vec<u64>, payloads: Vec<String>) -> PyResult<()> {
        if rows.len() != payloads.len() {
            return Err(PyValueError::new_err("rows and payloads differ in length"));
        }
        py.detach(|| self.submit_jobs(rows.into_iter().zip(payloads)))
    }

    /// [`submit`](Self::submit) with Arrow arrays (anything with `__arrow_c_array__`): `rows`
    /// int64 positions and `payloads` (large) strings, each a payload as in `submit`. The
    /// strings are read in place: no Python string per row.
    fn submit_arrow(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyAny>,
        payloads: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let rows = import_array(rows)?;
        let payloads = import_array(payloads)?;
        let rows = rows
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| PyValueError::new_err("rows must be an int64 array"))?;
        let payloads = payloads
            .as_any()
            .downcast_ref::<LargeStringArray>()
            .ok_or_else(|| PyValueError::new_err("payloads must be a large_string array"))?;
        if rows.len() != payloads.len() || rows.null_count() + payloads.null_count() > 0 {
            return Err(PyValueError::new_err(
                "rows and payloads must have equal lengths and no nulls",
            ));
        }
        py.detach(|| {
            let pairs = rows.values().iter().zip(payloads.iter().flatten());
            self.submit_jobs(pairs.map(|(row, payload)| (*row as u64, payload.to_string())))
        })
    }

    /// No more rows will be submitted.
    fn close_input(&self) {
        self.inner.close_input();
    }

    /// Results that arrived, as one Arrow record batch (`pyarrow.record_batch(result)`); an
    /// empty one when none came within `timeout` seconds; `None` once the run is over and
    /// everything was handed out.
    fn poll(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<ResultBatch>> {
        let wait = Duration::from_secs_f64(timeout.max(0.0));
        let polled = py.detach(|| match self.inner.poll(wait) {
            Poll::Done => Ok(None),
            Poll::Idle => batch::to_batch(&[]).map(Some),
            Poll::Rows(rows) => batch::to_batch(&rows).map(Some),
        });
        let batch = polled.map_err(native_error)?;
        Ok(batch.map(|batch| ResultBatch { batch }))
    }

    /// Seals the run log's current segment; its path, or `None` when nothing was logged
    /// since the last call. Every row in it is handed out by the polls that follow.
    fn roll_log(&self) -> Option<std::path::PathBuf> {
        self.inner.roll_log()
    }

    /// Stops dispatching; rows still in flight get no result.
    fn cancel(&self) {
        self.inner.cancel();
    }

    /// Graceful stop: nothing new is sent; requests on the wire finish and report.
    fn drain(&self) {
        self.inner.drain();
    }

    /// Why the run stopped early (authentication, quota), with any key redacted.
    fn fatal_error(&self) -> Option<String> {
        self.inner.fatal_error()
    }

    /// A lease of permits from outside, for an executor configured `granted` (a shard of a
    /// cluster run): send at these rates (negative: not limited) for `seconds`.
    fn grant(
        &self,
        requests_per_second: f64,
        tokens_per_second: f64,
        seconds: f64,
    ) -> PyResult<()> {
        if self
            .inner
            .grant(requests_per_second, tokens_per_second, seconds)
        {
            Ok(())
        } else {
            Err(config_error(
                "grant: this executor takes no permits from outside (configure it granted)".into(),
            ))
        }
    }

    /// Answers and 429s since the last call (a `granted` executor: its pace is learned outside,
    /// from the answers of every process sharing the limit; see `PaceLearner`).
    fn take_answers(&self) -> (u64, u64) {
        self.inner.take_answers()
    }

    /// Live counters for progress and metrics.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("submitted", &s.submitted),
            ("done", &s.done),
            ("ok", &s.ok),
            ("failed", &s.failed),
            ("in_flight", &s.in_flight),
            ("retrying", &s.retrying),
            ("requests", &s.requests),
            ("retries", &s.retries),
            ("rate_limited", &s.rate_limited),
            ("prompt_tokens", &s.prompt_tokens),
            ("completion_tokens", &s.completion_tokens),
        ] {
            dict.set_item(name, value.load(Ordering::Relaxed))?;
        }
        dict.set_item("concurrency", self.inner.concurrency())?;
        // Where the pace comes from: the server's stated limit, one learned from 429s, or none.
        let (source, per_second) = match self.inner.pacing() {
            Pacing::Unpaced => (None, None),
            Pacing::Stated { rpm } => (Some("stated"), Some(f64::from(rpm) / 60.0)),
            Pacing::Learned { per_second } => (Some("learned"), Some(per_second)),
        };
        dict.set_item("pace_source", source)?;
        dict.set_item("pace_rps", per_second)?;
        Ok(dict)
    }

    /// Run metrics: retries by cause, the latency histogram (cumulative counts by upper bound
    /// in seconds), and rows and completion tokens per second so far.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        let retries = PyDict::new(py);
        for (cause, n) in s.retries_by_cause.snapshot() {
            retries.set_item(cause, n)?;
        }
        dict.set_item("retries_by_cause", retries)?;
        dict.set_item("rate_limited", s.rate_limited.load(Ordering::Relaxed))?;
        let h = s.latency.snapshot();
        let buckets = PyDict::new(py);
        for (bound, n) in &h.cumulative {
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            buckets.set_item(le, n)?;
        }
        dict.set_item("latency_buckets", buckets)?;
        dict.set_item("latency_count", h.count)?;
        dict.set_item("latency_sum_s", h.sum_seconds)?;
        let r = metrics::rates(s);
        dict.set_item("elapsed_s", r.elapsed_seconds)?;
        dict.set_item("rows_per_s", r.rows_per_second)?;
        dict.set_item("tokens_per_s", r.tokens_per_second)?;
        Ok(dict)
    }

    /// The run's metrics in Prometheus text format.
    fn metrics_text(&self) -> String {
        self.inner.metrics_text()
    }
}

impl Executor {
    /// Queues (row, payload JSON) pairs; a payload that is not valid fails the call before
    /// anything is queued.
    fn submit_jobs(&self, pairs: impl Iterator<Item = (u64, String)>) -> PyResult<()> {
        let jobs = pairs
            .map(|(row, payload)| {
                RowPayload::from_json(payload)
                    .map(|payload| Job::new(row, payload))
                    .map_err(|e| {
                        PyValueError::new_err(format!("row {row}: messages are not valid: {e}"))
                    })
            })
            .collect::<PyResult<Vec<Job>>>()?;
        Ok(self.inner.submit_blocking(jobs)?)
    }
}

/// Takes an array from a Python object through the Arrow PyCapsule interface
/// (`__arrow_c_array__`), moving its buffers out of the capsule.
fn import_array(obj: &Bound<'_, PyAny>) -> PyResult<ArrayRef> {
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) =
        obj.call_method0("__arrow_c_array__")?.extract()?;
    let schema = schema
        .pointer_checked(Some(c"arrow_schema"))?
        .cast::<FFI_ArrowSchema>();
    let array = array
        .pointer_checked(Some(c"arrow_array"))?
        .cast::<FFI_ArrowArray>();
    // SAFETY: the capsules hold what their names say (checked above); the array is moved out
    // and an empty one left behind, so the capsule's destructor releases nothing twice.
    let data = unsafe {
        let array = std::ptr::replace(array.as_ptr(), FFI_ArrowArray::empty());
        from_ffi(array, schema.as_ref())
    }
    .map_err(|e| PyValueError::new_err(format!("not a usable Arrow array: {e}")))?;
    Ok(make_array(data))
}

/// One poll's results, exported through the Arrow PyCapsule interface.
#[pyclass(module = "runner._native", frozen)]
struct ResultBatch {
    batch: RecordBatch,
}

#[pymethods]
impl ResultBatch {
    fn __len__(&self) -> usize {
        self.batch.num_rows()
    }

    /// The Arrow C data interface: (schema capsule, array capsule) of a struct array.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)> {
        let _ = requested_schema; // the batch has one schema; the caller casts if it must
        let data = StructArray::from(self.batch.clone()).into_data();
        let (array, schema) = to_ffi(&data).map_err(native_error)?;
        Ok((
            PyCapsule::new_with_value(py, schema, c"arrow_schema")?,
            PyCapsule::new_with_value(py, array, c"arrow_array")?,
        ))
    }
}

/// The Arrow schema of every poll's [`ResultBatch`] (`batch.rs`), exported through the Arrow
/// PyCapsule interface: `pyarrow.schema(result_schema())`.
#[pyclass(module = "runner._native", frozen)]
struct ResultSchema;

#[pymethods]
impl ResultSchema {
    /// The Arrow C data interface: a schema capsule.
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        let schema = FFI_ArrowSchema::try_from(batch::schema().as_ref()).map_err(native_error)?;
        PyCapsule::new_with_value(py, schema, c"arrow_schema")
    }
}

/// The schema of the result batches, defined once in `batch.rs`.
#[pyfunction]
fn result_schema() -> ResultSchema {
    ResultSchema
}

/// Whether `name` is an OpenAI reasoning model (o1, o3, o4, gpt-5 and their variants): the
/// request builder then sends `max_completion_tokens`, and the model refuses a non-default
/// temperature. The one rule, `provider::is_reasoning_model`.
#[pyfunction]
fn is_reasoning_model(name: &str) -> bool {
    provider::is_reasoning_model(name)
}

/// The Batch API engine's request lines: per payload (as `Executor.submit` takes it), the
/// request body the live executor would send (never streamed) and its request hash.
#[pyfunction]
fn batch_requests(
    py: Python<'_>,
    config_json: &str,
    payloads: Vec<String>,
) -> PyResult<Vec<(String, String)>> {
    let config = batch_api::config(config_json)?;
    Ok(py.detach(|| batch_api::requests(&config, payloads))?)
}

/// One Batch API answer: (row, request_hash, http_status, body, error_type, error,
/// started_at_us, finished_at_us).
type BatchItem = (
    u64,
    String,
    Option<u16>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

/// The result rows of Batch API answers, in order, as one result batch (the shape of a poll).
#[pyfunction]
fn batch_results(
    py: Python<'_>,
    config_json: &str,
    items: Vec<BatchItem>,
) -> PyResult<ResultBatch> {
    let config = batch_api::config(config_json)?;
    let answers = items
        .into_iter()
        .map(
            |(row, request_hash, http_status, body, error_type, error, started, finished)| {
                BatchAnswer {
                    row,
                    request_hash,
                    http_status,
                    body,
                    error_type,
                    error,
                    started_at_us: started,
                    finished_at_us: finished,
                }
            },
        )
        .collect();
    let rows = py.detach(|| batch_api::results(&config, answers))?;
    let batch = batch::to_batch(&rows).map_err(native_error)?;
    Ok(ResultBatch { batch })
}

/// The project's mock OpenAI/Anthropic server, serving on the shared runtime until stopped.
#[pyclass(module = "runner._native", frozen)]
struct MockServer {
    inner: NativeMockServer,
    api_key: String,
}

#[pymethods]
impl MockServer {
    #[new]
    #[pyo3(signature = (config_json = "{}", host = "127.0.0.1", port = 0))]
    fn new(py: Python<'_>, config_json: &str, host: &str, port: u16) -> PyResult<Self> {
        let config: MockConfig = serde_json::from_str(config_json)
            .map_err(|e| config_error(format!("mock server configuration: {e}")))?;
        let addr = format!("{host}:{port}")
            .parse()
            .map_err(|e| config_error(format!("mock server address {host}:{port}: {e}")))?;
        let api_key = config.api_key.clone();
        let inner = py
            .detach(|| NativeMockServer::start(config, addr))
            .map_err(|e| native_error(format!("mock server on {host}:{port}: {e}")))?;
        Ok(Self { inner, api_key })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.local_addr().port()
    }

    /// `http://HOST:PORT`, the Anthropic-style base; OpenAI clients append `/v1`.
    #[getter]
    fn url(&self) -> String {
        format!("http://{}", self.inner.local_addr())
    }

    /// The key the server accepts (a test value, not a secret).
    #[getter]
    fn api_key(&self) -> String {
        self.api_key.clone()
    }

    /// Request counters as a JSON string.
    fn stats_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.stats()).map_err(native_error)
    }

    fn reset_stats(&self) {
        self.inner.reset_stats();
    }

    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop());
    }
}

/// What a request's task hands to its [`ChunkStream`].
enum Item {
    Delta(String),
    /// Boxed: an answer is large next to a delta, and there is one per request.
    Done(Box<Result<Response, NativeClientError>>),
}

/// A model client: one connection pool on the shared runtime, shared by every request.
#[pyclass(module = "runner._native", frozen)]
struct ModelClient {
    inner: Arc<NativeModelClient>,
}

#[pymethods]
impl ModelClient {
    #[new]
    #[pyo3(signature = (pool_size = 128))]
    fn new(pool_size: usize) -> PyResult<Self> {
        let inner = NativeModelClient::new(pool_size)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Starts one request (`config_json`: provider, model, api_key, api_base, temperature,
    /// max_tokens, stream, max_retries, timeout; `messages_json`: a list of {role, content})
    /// as a task on the shared runtime; its pieces and its end arrive through the stream.
    fn stream(&self, config_json: &str, messages_json: &str) -> PyResult<ChunkStream> {
        let config = ClientConfig::from_json(config_json)?;
        let messages: Vec<Message> = serde_json::from_str(messages_json)
            .map_err(|e| PyValueError::new_err(format!("messages are not valid: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.inner.clone();
        let task = runtime().spawn(async move {
            let result = client
                .send(&config, &messages, |piece| {
                    let _ = tx.send(Item::Delta(piece.to_string()));
                })
                .await;
            let _ = tx.send(Item::Done(Box::new(result)));
        });
        Ok(ChunkStream {
            rx: Arc::new(AsyncMutex::new(rx)),
            task: task.abort_handle(),
        })
    }
}

/// The pieces of one request as an async iterator: `str` deltas (streaming only), then one
/// `dict` with the whole answer; a failure raises `ClientError`. Dropping it (or `cancel()`)
/// abandons the request and frees its connection.
#[pyclass(module = "runner._native", frozen)]
struct ChunkStream {
    rx: Arc<AsyncMutex<mpsc::UnboundedReceiver<Item>>>,
    task: tokio::task::AbortHandle,
}

#[pymethods]
impl ChunkStream {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// An asyncio future of the next item: a runtime task waits for it, then completes the
    /// future through the event loop's `call_soon_threadsafe`.
    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let event_loop = GET_RUNNING_LOOP
            .import(py, "asyncio", "get_running_loop")?
            .call0()?;
        let future = event_loop.call_method0("create_future")?;
        let rx = self.rx.clone();
        let target = (event_loop.unbind(), future.clone().unbind());
        let task = runtime().spawn(async move {
            // `recv` is cancel-safe: a future cancelled in Python aborts this task, losing nothing.
            let item = rx.lock().await.recv().await;
            deliver(target, item).await;
        });
        let on_done = AbortIfCancelled {
            task: task.abort_handle(),
        };
        future.call_method1("add_done_callback", (on_done,))?;
        Ok(future)
    }

    /// Abandons the request.
    fn cancel(&self) {
        self.task.abort();
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Deliveries into Python under way on runtime threads; the interpreter waits for them at exit.
static DELIVERING: AtomicUsize = AtomicUsize::new(0);
/// Set at interpreter exit: from then on no runtime thread enters Python.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Hands `item` to the asyncio future in `target` (its loop, the future), on a blocking-pool
/// thread: taking the GIL may wait, and the runtime's workers must not.
async fn deliver(target: (Py<PyAny>, Py<PyAny>), item: Option<Item>) {
    // Announce first, then check: `wait_for_deliveries` sets EXITING, then waits for zero.
    DELIVERING.fetch_add(1, AtomicOrdering::SeqCst);
    if EXITING.load(AtomicOrdering::SeqCst) {
        DELIVERING.fetch_sub(1, AtomicOrdering::SeqCst);
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        Python::attach(move |py| {
            let (event_loop, future) = target;
            let (ok, value) = match item_value(py, item) {
                Ok(value) => (true, value),
                Err(err) => (false, err.into_value(py).into_any()),
            };
            let resolve = wrap_pyfunction!(resolve, py);
            // Fails only when the loop is closed: nobody is waiting any more.
            if let Ok(resolve) = resolve {
                let _ = event_loop.call_method1(
                    py,
                    "call_soon_threadsafe",
                    (resolve, future, ok, value),
                );
            }
        });
        DELIVERING.fetch_sub(1, AtomicOrdering::SeqCst);
    })
    .await;
}

fn item_value(py: Python<'_>, item: Option<Item>) -> PyResult<Py<PyAny>> {
    match item {
        None => Err(pyo3::exceptions::PyStopAsyncIteration::new_err(())),
        Some(Item::Delta(piece)) => Ok(piece.into_pyobject(py)?.into_any().unbind()),
        Some(Item::Done(done)) => match *done {
            Ok(response) => Ok(answer(py, &response)?.into_any().unbind()),
            Err(err) => Err(client_error(err)),
        },
    }
}

/// Runs on the event loop: completes `future` unless it was cancelled meanwhile.
#[pyfunction]
fn resolve(future: &Bound<'_, PyAny>, ok: bool, value: Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    let method = if ok { "set_result" } else { "set_exception" };
    future.call_method1(method, (value,))?;
    Ok(())
}

/// A future's done-callback that abandons the waiting task when the future was cancelled.
#[pyclass(module = "runner._native", frozen)]
struct AbortIfCancelled {
    task: tokio::task::AbortHandle,
}

#[pymethods]
impl AbortIfCancelled {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.task.abort();
        }
        Ok(())
    }
}

/// Registered with `atexit`: lets deliveries under way finish (GIL released, at most 2 s), and
/// keeps later ones out of a finalizing interpreter.
#[pyfunction]
fn wait_for_deliveries(py: Python<'_>) {
    EXITING.store(true, AtomicOrdering::SeqCst);
    py.detach(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while DELIVERING.load(AtomicOrdering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

fn answer<'py>(py: Python<'py>, response: &Response) -> PyResult<Bound<'py, PyDict>> {
    let c = &response.completion;
    let dict = PyDict::new(py);
    dict.set_item("text", &c.text)?;
    dict.set_item("finish_reason", &c.finish_reason)?;
    dict.set_item("prompt_tokens", c.prompt_tokens)?;
    dict.set_item("completion_tokens", c.completion_tokens)?;
    dict.set_item("refusal", &c.refusal)?;
    dict.set_item("tool_calls", &c.tool_calls)?;
    dict.set_item("reasoning_tokens", c.reasoning_tokens)?;
    dict.set_item("cached_prompt_tokens", c.cached_prompt_tokens)?;
    dict.set_item("cache_write_tokens", c.cache_write_tokens)?;
    dict.set_item("latency_ms", response.latency.as_secs_f64() * 1000.0)?;
    dict.set_item("ttft_ms", response.ttft.map(|d| d.as_secs_f64() * 1000.0))?;
    dict.set_item("attempts", response.attempts)?;
    dict.set_item("http_status", response.http_status)?;
    Ok(dict)
}

/// Serves an executor's metrics in Prometheus text format at `GET /metrics` while it runs.
#[pyclass(module = "runner._native", frozen)]
struct MetricsServer {
    inner: NativeMetricsServer,
}

/// Executors to show on one metrics endpoint, each with its (label, value) pairs.
type LabelledRuns<'py> = Vec<(PyRef<'py, Executor>, Vec<(String, String)>)>;

/// What a metrics server shows: several labelled executors (`runs`), else one, else nothing.
fn metrics_source(
    executor: Option<PyRef<'_, Executor>>,
    runs: Option<LabelledRuns<'_>>,
) -> Option<metrics::MetricsSource> {
    match runs {
        Some(runs) => Some(labelled_source(&runs)),
        None => executor.map(|e| e.inner.metrics_source()),
    }
}

fn labelled_source(runs: &LabelledRuns<'_>) -> metrics::MetricsSource {
    let runs: Vec<(&NativeExecutor, metrics::Labels)> = runs
        .iter()
        .map(|(executor, labels)| (&executor.inner, labels.clone()))
        .collect();
    NativeExecutor::labelled_metrics_source(&runs)
}

#[pymethods]
impl MetricsServer {
    #[new]
    #[pyo3(signature = (port = 0, executor = None, host = "127.0.0.1", *, runs = None))]
    fn new(
        py: Python<'_>,
        port: u16,
        executor: Option<PyRef<'_, Executor>>,
        host: &str,
        runs: Option<LabelledRuns<'_>>,
    ) -> PyResult<Self> {
        let addr = format!("{host}:{port}")
            .parse()
            .map_err(|e| config_error(format!("metrics address {host}:{port}: {e}")))?;
        let source = metrics_source(executor, runs);
        let inner = py
            .detach(|| NativeMetricsServer::start(addr, source))
            .map_err(|e| native_error(format!("metrics server on {host}:{port}: {e}")))?;
        Ok(Self { inner })
    }

    /// Serves `executor`'s metrics from now on (`None`: only `prompt_runner_up`); or, with
    /// `runs=[(executor, [(label, value), ...]), ...]`, several executors' in one exposition,
    /// each sample labelled with its executor's labels.
    #[pyo3(signature = (executor = None, *, runs = None))]
    fn watch(&self, executor: Option<PyRef<'_, Executor>>, runs: Option<LabelledRuns<'_>>) {
        self.inner.set_source(metrics_source(executor, runs));
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.local_addr().port()
    }

    /// `http://HOST:PORT/metrics`.
    #[getter]
    fn url(&self) -> String {
        format!("http://{}/metrics", self.inner.local_addr())
    }

    fn stop(&self) {
        self.inner.stop();
    }
}

/// Installs the process's log subscriber (stderr; text or one JSON object per line) once;
/// returns False when one was already installed. `level`: error, warning, info, debug, trace,
/// off, or directives such as `prompt_runner=debug,warn`.
#[pyfunction]
#[pyo3(signature = (level = "info", json = false))]
fn init_logging(level: &str, json: bool) -> PyResult<bool> {
    Ok(crate::logging::init(level, json)?)
}

/// The whole records of run-log segments, read in the order given, as one result batch (the
/// shape of a poll), and how many segments had a torn tail (ignored).
#[pyfunction]
fn read_log(py: Python<'_>, segments: Vec<std::path::PathBuf>) -> PyResult<(ResultBatch, usize)> {
    let recovered = py
        .detach(|| wal::read(&segments))
        .map_err(|e| native_error(format!("cannot read the run's log: {e}")))?;
    let batch = batch::to_batch(&recovered.rows).map_err(native_error)?;
    Ok((ResultBatch { batch }, recovered.torn))
}

/// The pace learned from 429s (`adaptive.rs`) for answers counted elsewhere: a cluster's permit
/// pool feeds it every shard's answers, a time bin at a time, and leases the pace it learns.
/// Times are the caller's clock in seconds (`start`: when the first bin begins); they must not
/// go back.
#[pyclass(module = "runner._native")]
struct PaceLearner {
    inner: AdaptiveRate,
    base: Instant,
    start: f64,
}

#[pymethods]
impl PaceLearner {
    #[new]
    fn new(start: f64) -> Self {
        let base = Instant::now();
        Self {
            inner: AdaptiveRate::new(base),
            base,
            start,
        }
    }

    /// Counts `answers` answers, `limited` of them 429s, that came in up to time `at`.
    fn record(&mut self, answers: u64, limited: u64, at: f64) {
        let since = at - self.start;
        let since = if since.is_finite() {
            since.clamp(0.0, 1e9)
        } else {
            0.0
        };
        let at = self.base + Duration::from_secs_f64(since);
        self.inner.record(answers, limited.min(answers), at);
    }

    /// The learned pace in requests per second; None while no limit has been found.
    #[getter]
    fn rate(&self) -> Option<f64> {
        self.inner.rate()
    }
}

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Executor>()?;
    m.add_class::<ResultBatch>()?;
    m.add_class::<ResultSchema>()?;
    m.add_class::<MockServer>()?;
    m.add_class::<ModelClient>()?;
    m.add_class::<ChunkStream>()?;
    m.add_class::<MetricsServer>()?;
    m.add_class::<PaceLearner>()?;
    m.add_function(wrap_pyfunction!(init_logging, m)?)?;
    m.add_function(wrap_pyfunction!(read_log, m)?)?;
    m.add_function(wrap_pyfunction!(result_schema, m)?)?;
    m.add_function(wrap_pyfunction!(is_reasoning_model, m)?)?;
    m.add_function(wrap_pyfunction!(batch_requests, m)?)?;
    m.add_function(wrap_pyfunction!(batch_results, m)?)?;
    m.add("ClientError", py.get_type::<ClientError>())?;
    let wait = wrap_pyfunction!(wait_for_deliveries, m)?;
    py.import("atexit")?.call_method1("register", (wait,))?;
    m.add("NativeError", py.get_type::<NativeError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("RunStopped", py.get_type::<RunStopped>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
