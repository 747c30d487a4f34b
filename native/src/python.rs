//! PyO3 bindings: every `#[pymethods]` of the module `runner._native`, and the one place that
//! maps native errors to Python exceptions.

use crate::config::RunConfig;
use crate::error::Error;
use crate::executor::{Executor as NativeExecutor, Job, Poll, RowResult};
use crate::mock::{MockConfig, MockServer as NativeMockServer};
use crate::provider::Message;
use crate::runtime::runtime;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::Ordering;
use std::time::Duration;

create_exception!(
    _native,
    NativeError,
    PyException,
    "Base class of the native module's errors."
);
create_exception!(
    _native,
    ConfigError,
    NativeError,
    "A run or mock configuration was refused."
);
create_exception!(
    _native,
    RunStopped,
    NativeError,
    "The run was stopped (auth/quota failure or cancel)."
);

fn to_py(err: Error) -> PyErr {
    match err {
        Error::Config(msg) => ConfigError::new_err(msg),
        Error::Io(err) => NativeError::new_err(err.to_string()),
        Error::Stopped(msg) => RunStopped::new_err(msg),
    }
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
        let config = RunConfig::from_json(config_json).map_err(to_py)?;
        let inner = NativeExecutor::start(config, runtime().handle()).map_err(to_py)?;
        Ok(Self { inner })
    }

    /// Queues rows (`rows[i]` is the position of `payloads[i]`, a JSON array of messages);
    /// blocks while the queue is full.
    fn submit(&self, py: Python<'_>, rows: Vec<u64>, payloads: Vec<String>) -> PyResult<()> {
        if rows.len() != payloads.len() {
            return Err(PyValueError::new_err("rows and payloads differ in length"));
        }
        py.detach(|| {
            let mut jobs = Vec::with_capacity(rows.len());
            for (row, payload) in rows.into_iter().zip(payloads) {
                let messages: Vec<Message> = serde_json::from_str(&payload).map_err(|e| {
                    PyValueError::new_err(format!("row {row}: messages are not valid: {e}"))
                })?;
                jobs.push(Job { row, messages });
            }
            self.inner.submit_blocking(jobs).map_err(to_py)
        })
    }

    /// No more rows will be submitted.
    fn close_input(&self) {
        self.inner.close_input();
    }

    /// Results that arrived, as a dict of equal-length column lists; `{}` when none came within
    /// `timeout` seconds; `None` once the run is over and everything was handed out.
    fn poll<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let wait = Duration::from_secs_f64(timeout.max(0.0));
        match py.detach(|| self.inner.poll(wait)) {
            Poll::Done => Ok(None),
            Poll::Idle => Ok(Some(PyDict::new(py))),
            Poll::Rows(rows) => columns(py, rows).map(Some),
        }
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
        Ok(dict)
    }
}

fn columns(py: Python<'_>, rows: Vec<RowResult>) -> PyResult<Bound<'_, PyDict>> {
    let n = rows.len();
    let mut row = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut output = Vec::with_capacity(n);
    let mut finish_reason = Vec::with_capacity(n);
    let mut prompt_tokens = Vec::with_capacity(n);
    let mut completion_tokens = Vec::with_capacity(n);
    let mut latency_ms = Vec::with_capacity(n);
    let mut ttft_ms = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut http_status = Vec::with_capacity(n);
    let mut error_type = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut started_at = Vec::with_capacity(n);
    let mut finished_at = Vec::with_capacity(n);
    let mut request_hash = Vec::with_capacity(n);
    for r in rows {
        row.push(r.row);
        status.push(if r.ok { "ok" } else { "error" });
        output.push(r.output);
        finish_reason.push(r.finish_reason);
        prompt_tokens.push(r.prompt_tokens);
        completion_tokens.push(r.completion_tokens);
        latency_ms.push(r.latency_ms);
        ttft_ms.push(r.ttft_ms);
        attempts.push(r.attempts);
        http_status.push(r.http_status);
        error_type.push(r.error_type);
        error.push(r.error);
        started_at.push(r.started_at_us);
        finished_at.push(r.finished_at_us);
        request_hash.push(r.request_hash);
    }
    let dict = PyDict::new(py);
    dict.set_item("row", row)?;
    dict.set_item("status", status)?;
    dict.set_item("output", output)?;
    dict.set_item("finish_reason", finish_reason)?;
    dict.set_item("prompt_tokens", prompt_tokens)?;
    dict.set_item("completion_tokens", completion_tokens)?;
    dict.set_item("latency_ms", latency_ms)?;
    dict.set_item("ttft_ms", ttft_ms)?;
    dict.set_item("attempts", attempts)?;
    dict.set_item("http_status", http_status)?;
    dict.set_item("error_type", error_type)?;
    dict.set_item("error", error)?;
    dict.set_item("started_at", started_at)?;
    dict.set_item("finished_at", finished_at)?;
    dict.set_item("request_hash", request_hash)?;
    Ok(dict)
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
            .map_err(|e| ConfigError::new_err(format!("mock server configuration: {e}")))?;
        let addr = format!("{host}:{port}")
            .parse()
            .map_err(|e| ConfigError::new_err(format!("mock server address {host}:{port}: {e}")))?;
        let api_key = config.api_key.clone();
        let inner = py
            .detach(|| NativeMockServer::start(config, addr))
            .map_err(|e| NativeError::new_err(format!("mock server on {host}:{port}: {e}")))?;
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
        serde_json::to_string(&self.inner.stats()).map_err(|e| NativeError::new_err(e.to_string()))
    }

    fn reset_stats(&self) {
        self.inner.reset_stats();
    }

    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop());
    }
}

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Executor>()?;
    m.add_class::<MockServer>()?;
    m.add("NativeError", py.get_type::<NativeError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("RunStopped", py.get_type::<RunStopped>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
