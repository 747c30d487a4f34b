//! Run metrics: a run's live counters (`Stats`), a fixed-bucket latency histogram, retries by
//! cause, their Prometheus text (written by `prometheus-client`), and the tiny HTTP server that
//! exposes it (`GET /metrics`) while a run goes on.

use crate::error::ErrorType;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Upper bounds (seconds) of the request latency histogram's buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// A lock-free latency histogram over [`LATENCY_BUCKETS`].
///
/// Not `prometheus-client`'s: that one takes a mutex per observation (16 ns against 7 ns here,
/// one thread, uncontended) and keeps its buckets, sum and count private, while the run summary
/// and `Executor.metrics()` read them from [`Histogram::snapshot`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// A histogram's state at one moment, with cumulative bucket counts as Prometheus wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, ending with `(inf, count)`.
    pub cumulative: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(
            u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let cumulative = bounds
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Relaxed);
                (bound, running)
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// One counter per [`ErrorType`], e.g. retries by their cause.
#[derive(Debug, Default)]
pub struct CauseCounters([AtomicU64; ErrorType::ALL.len()]);

impl CauseCounters {
    pub fn add(&self, cause: ErrorType) {
        if let Some(slot) = ErrorType::ALL.iter().position(|t| *t == cause) {
            self.0[slot].fetch_add(1, Relaxed);
        }
    }

    /// The causes seen so far with their counts (zeros left out).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        ErrorType::ALL
            .iter()
            .zip(&self.0)
            .map(|(t, n)| (t.as_str(), n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// When the run started, for per-second rates.
#[derive(Debug)]
pub struct RunClock(Instant);

impl Default for RunClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl RunClock {
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Derived rates of a run so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub elapsed_seconds: f64,
    /// Finished rows per second since the run started.
    pub rows_per_second: f64,
    /// Completion tokens per second since the run started.
    pub tokens_per_second: f64,
}

/// Live counters, read by progress displays and kept as run metrics.
#[derive(Default)]
pub struct Stats {
    pub submitted: AtomicU64,
    pub done: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    pub retrying: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    // observability: run metrics
    /// Retries by the failure that caused them.
    pub retries_by_cause: CauseCounters,
    /// Duration of every attempt.
    pub latency: Histogram,
    /// Started with the run, for per-second rates.
    pub clock: RunClock,
}

/// Rows and completion tokens per second since the run started.
pub fn rates(stats: &Stats) -> Rates {
    let elapsed = stats.clock.elapsed().as_secs_f64();
    let per_second = |n: u64| {
        if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        }
    };
    Rates {
        elapsed_seconds: elapsed,
        rows_per_second: per_second(stats.done.load(Relaxed)),
        tokens_per_second: per_second(stats.completion_tokens.load(Relaxed)),
    }
}

/// Labels put on every sample of one run, as (name, value) pairs: e.g. provider and model.
pub type Labels = Vec<(String, String)>;

/// The run's metrics in the Prometheus text exposition format (version 0.0.4).
pub fn render(stats: &Stats, concurrency: usize) -> String {
    render_runs(&[Run {
        labels: &[],
        stats,
        concurrency,
    }])
}

/// One run's part of an exposition that shows several (a model matrix).
pub struct Run<'a> {
    /// Labels put on each of this run's samples, first; may be empty.
    pub labels: &'a [(String, String)],
    pub stats: &'a Stats,
    pub concurrency: usize,
}

/// Several runs' metrics in one exposition: each family's HELP and TYPE once, then every run's
/// samples with that run's labels.
///
/// The text is written by `prometheus-client`'s Prometheus text encoder (names, `_total`,
/// escaping, `le` values as Go writes them). The values are read from [`Stats`]: its atomics
/// and lock-free [`Histogram`] stay on the hot path (the crate's histogram takes a mutex per
/// observation and keeps its buckets private, and the run summary reads ours).
pub fn render_runs(runs: &[Run<'_>]) -> String {
    let mut out = String::with_capacity(4096 * runs.len());
    if runs.is_empty() {
        return out;
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(
        runs.iter().map(Snapshot::of).collect(),
    )));
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// `prompt_runner_up 1`, the sample a metrics endpoint always shows.
fn up() -> String {
    let mut registry = Registry::default();
    registry.register(
        "prompt_runner_up",
        "Whether the metrics endpoint is serving",
        ConstGauge::new(1i64),
    );
    let mut out = String::new();
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// One run's values at the moment of a scrape.
#[derive(Debug)]
struct Snapshot {
    labels: Labels,
    ok: u64,
    failed: u64,
    submitted: u64,
    requests: u64,
    retries_by_cause: Vec<(&'static str, u64)>,
    rate_limited: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    in_flight: i64,
    concurrency: i64,
    rates: Rates,
    latency: HistogramSnapshot,
}

impl Snapshot {
    fn of(run: &Run<'_>) -> Self {
        let s = run.stats;
        Self {
            labels: run.labels.to_vec(),
            ok: s.ok.load(Relaxed),
            failed: s.failed.load(Relaxed),
            submitted: s.submitted.load(Relaxed),
            requests: s.requests.load(Relaxed),
            retries_by_cause: s.retries_by_cause.snapshot(),
            rate_limited: s.rate_limited.load(Relaxed),
            prompt_tokens: s.prompt_tokens.load(Relaxed),
            completion_tokens: s.completion_tokens.load(Relaxed),
            in_flight: i64::try_from(s.in_flight.load(Relaxed)).unwrap_or(i64::MAX),
            concurrency: i64::try_from(run.concurrency).unwrap_or(i64::MAX),
            rates: rates(s),
            latency: s.latency.snapshot(),
        }
    }
}

/// One sample's value.
#[derive(Debug)]
enum Value<'a> {
    Count(u64),
    Level(i64),
    Rate(f64),
    Latency(&'a HistogramSnapshot),
}

impl EncodeMetric for Value<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        match *self {
            Value::Count(n) => ConstCounter::new(n).encode(encoder),
            Value::Level(n) => ConstGauge::new(n).encode(encoder),
            Value::Rate(x) => ConstGauge::new(x).encode(encoder),
            Value::Latency(h) => {
                // The encoder takes per-bucket counts and sums them up itself.
                let mut below = 0;
                let buckets: Vec<(f64, u64)> = (h.cumulative.iter())
                    .map(|&(bound, n)| (bound, n - std::mem::replace(&mut below, n)))
                    .collect();
                encoder.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Value::Count(_) => MetricType::Counter,
            Value::Level(_) | Value::Rate(_) => MetricType::Gauge,
            Value::Latency(_) => MetricType::Histogram,
        }
    }
}

/// A run's samples of one family: each with its own label (if any) and its value.
type Samples = for<'s> fn(&'s Snapshot) -> Vec<(Option<(&'static str, &'static str)>, Value<'s>)>;

/// Every family of the exposition, in order: name (a counter's without `_total`), type, help,
/// and how a run's snapshot gives its samples.
const FAMILIES: &[(&str, MetricType, &str, Samples)] = {
    use MetricType::{Counter, Gauge, Histogram};
    use Value::{Count, Latency, Level, Rate};
    &[
        (
            "prompt_runner_rows",
            Counter,
            "Rows finished, by status.",
            |r| {
                vec![
                    (Some(("status", "ok")), Count(r.ok)),
                    (Some(("status", "error")), Count(r.failed)),
                ]
            },
        ),
        (
            "prompt_runner_rows_submitted",
            Counter,
            "Rows queued for sending.",
            |r| vec![(None, Count(r.submitted))],
        ),
        (
            "prompt_runner_requests",
            Counter,
            "HTTP requests sent, retries included.",
            |r| vec![(None, Count(r.requests))],
        ),
        (
            "prompt_runner_retries",
            Counter,
            "Retries, by the failure that caused them.",
            |r| {
                (r.retries_by_cause.iter())
                    .map(|&(cause, n)| (Some(("cause", cause)), Count(n)))
                    .collect()
            },
        ),
        (
            "prompt_runner_rate_limited",
            Counter,
            "Responses 429 or overloaded (529).",
            |r| vec![(None, Count(r.rate_limited))],
        ),
        (
            "prompt_runner_tokens",
            Counter,
            "Tokens reported by the provider, by kind.",
            |r| {
                vec![
                    (Some(("kind", "prompt")), Count(r.prompt_tokens)),
                    (Some(("kind", "completion")), Count(r.completion_tokens)),
                ]
            },
        ),
        (
            "prompt_runner_in_flight",
            Gauge,
            "Rows being sent or retried now.",
            |r| vec![(None, Level(r.in_flight))],
        ),
        (
            "prompt_runner_concurrency",
            Gauge,
            "The concurrency window (requests in flight at most).",
            |r| vec![(None, Level(r.concurrency))],
        ),
        (
            "prompt_runner_rows_per_second",
            Gauge,
            "Finished rows per second since the run started.",
            |r| vec![(None, Rate(r.rates.rows_per_second))],
        ),
        (
            "prompt_runner_tokens_per_second",
            Gauge,
            "Completion tokens per second since the run started.",
            |r| vec![(None, Rate(r.rates.tokens_per_second))],
        ),
        (
            "prompt_runner_request_latency_seconds",
            Histogram,
            "Duration of each HTTP attempt.",
            |r| vec![(None, Latency(&r.latency))],
        ),
    ]
};

/// The runs of one exposition, encoded family by family at each scrape: HELP and TYPE once,
/// then every run's samples, each labelled with the run's labels and its own.
#[derive(Debug)]
struct Exposition(Vec<Snapshot>);

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for &(name, kind, help, samples) in FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for run in &self.0 {
                for (own, value) in samples(run) {
                    let own: &[(&str, &str)] = match &own {
                        Some(pair) => std::slice::from_ref(pair),
                        None => &[],
                    };
                    value.encode(family.encode_family(&(run.labels.as_slice(), own))?)?;
                }
            }
        }
        Ok(())
    }
}

/// What a [`MetricsServer`] serves: a function rendering the current metrics.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// A `GET /metrics` endpoint on the shared runtime; stops on [`MetricsServer::stop`] or drop.
pub struct MetricsServer {
    addr: SocketAddr,
    source: Arc<RwLock<Option<MetricsSource>>>,
    shutdown: watch::Sender<bool>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free one) and serves `source`'s text (or only
    /// `prompt_runner_up 1` while there is no source).
    pub fn start(addr: SocketAddr, source: Option<MetricsSource>) -> std::io::Result<Self> {
        let rt = crate::runtime::runtime();
        let listener = {
            let _guard = rt.enter();
            let std_listener = std::net::TcpListener::bind(addr)?;
            std_listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let addr = listener.local_addr()?;
        let source = Arc::new(RwLock::new(source));
        let (shutdown, mut stop) = watch::channel(false);
        let served = source.clone();
        rt.spawn(async move {
            loop {
                let socket = tokio::select! {
                    _ = stop.wait_for(|s| *s).map(drop) => break,
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let served = served.clone();
                let service = hyper::service::service_fn(move |req| {
                    let served = served.clone();
                    async move { Ok::<_, Infallible>(answer(&served, &req)) }
                });
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service);
                    let _ = conn.await;
                });
            }
        });
        tracing::info!(%addr, "metrics endpoint listening");
        Ok(Self {
            addr,
            source,
            shutdown,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves another source from now on (e.g. the next model of a model matrix).
    pub fn set_source(&self, source: Option<MetricsSource>) {
        *self.source.write().unwrap_or_else(|e| e.into_inner()) = source;
    }

    /// Stops accepting connections. Idempotent; also runs on drop.
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(
    source: &RwLock<Option<MetricsSource>>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    };
    if req.method() != hyper::Method::GET || !matches!(req.uri().path(), "/metrics" | "/") {
        return reply(
            StatusCode::NOT_FOUND,
            "not found; try GET /metrics\n".into(),
        );
    }
    let source = source.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut body = up();
    if let Some(source) = source {
        body.push_str(&source());
    }
    reply(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for ms in [10, 60, 60, 700, 400_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.cumulative[0], (0.05, 1));
        assert_eq!(s.cumulative[1], (0.1, 3));
        assert_eq!(s.cumulative[4], (1.0, 4));
        assert_eq!(s.cumulative.last().copied(), Some((f64::INFINITY, 5)));
        assert!((s.sum_seconds - 400.83).abs() < 1e-6);
    }

    #[test]
    fn prometheus_text_has_every_family() {
        let stats = Stats::default();
        stats.ok.fetch_add(3, Relaxed);
        stats.done.fetch_add(3, Relaxed);
        stats.retries_by_cause.add(ErrorType::RateLimited);
        stats.retries_by_cause.add(ErrorType::RateLimited);
        stats.retries_by_cause.add(ErrorType::Timeout);
        stats.latency.observe(Duration::from_millis(80));
        let text = render(&stats, 8);
        for line in [
            "prompt_runner_rows_total{status=\"ok\"} 3",
            "prompt_runner_retries_total{cause=\"rate_limited\"} 2",
            "prompt_runner_retries_total{cause=\"timeout\"} 1",
            "prompt_runner_concurrency 8",
            "prompt_runner_request_latency_seconds_bucket{le=\"0.1\"} 1",
            "prompt_runner_request_latency_seconds_bucket{le=\"+Inf\"} 1",
            "prompt_runner_request_latency_seconds_count 1",
            "# TYPE prompt_runner_request_latency_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Every sample line is `name{labels} number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        (pairs.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn runs_of_a_matrix_share_one_exposition_told_apart_by_labels() {
        let (a, b) = (Stats::default(), Stats::default());
        a.ok.fetch_add(2, Relaxed);
        b.ok.fetch_add(5, Relaxed);
        b.latency.observe(Duration::from_millis(80));
        let text = render_runs(&[
            Run {
                labels: &labels(&[("provider", "openai"), ("model", "gpt-a")]),
                stats: &a,
                concurrency: 4,
            },
            Run {
                labels: &labels(&[("provider", "anthropic"), ("model", "say \"b\"\\\n")]),
                stats: &b,
                concurrency: 9,
            },
        ]);
        let b_labels = r#"provider="anthropic",model="say \"b\"\\\n""#;
        for line in [
            r#"prompt_runner_rows_total{provider="openai",model="gpt-a",status="ok"} 2"#
                .to_string(),
            format!(r#"prompt_runner_rows_total{{{b_labels},status="ok"}} 5"#),
            r#"prompt_runner_concurrency{provider="openai",model="gpt-a"} 4"#.to_string(),
            format!(r#"prompt_runner_concurrency{{{b_labels}}} 9"#),
            format!(r#"prompt_runner_request_latency_seconds_bucket{{{b_labels},le="0.1"}} 1"#),
            format!(r#"prompt_runner_request_latency_seconds_count{{{b_labels}}} 1"#),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE prompt_runner_rows_total counter")
                .count(),
            1
        );
        assert_eq!(render_runs(&[]), "");
    }

    #[test]
    fn server_answers_and_stops() {
        let source: MetricsSource = Arc::new(|| "prompt_runner_test 7\n".to_string());
        let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), Some(source))
            .expect("start");
        let url = format!("http://{}/metrics", server.local_addr());
        let client = crate::transport::build_client(1);
        let rt = crate::runtime::runtime();
        let body = rt
            .block_on(async { client.get(&url).send().await?.text().await })
            .expect("scrape");
        assert!(body.contains("prompt_runner_up 1") && body.contains("prompt_runner_test 7"));
        server.set_source(None);
        let body = rt
            .block_on(async { client.get(&url).send().await?.text().await })
            .expect("scrape");
        assert!(!body.contains("prompt_runner_test"));
        server.stop();
    }
}
