//! Request counters: lock-free atomics on the hot path, a mutex only for per-prompt counts.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// A snapshot of what a mock server has seen since it started or was last reset.
/// Control endpoints (`/_mock/*`, `/health`) are not counted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MockStats {
    /// Every API request (any path but the control endpoints).
    pub requests: u64,
    /// Outcomes: the HTTP status as a string ("200", "429", ...), or "reset" / "cut" for faults
    /// that never complete a response.
    pub by_status: BTreeMap<String, u64>,
    /// Requests per URL path.
    pub by_path: BTreeMap<String, u64>,
    /// Responses sent as an event stream (including cut ones).
    pub streamed: u64,
    /// Requests per last-user-message text (only with `track_prompts`): every attempt that
    /// passed auth and validation, whatever its outcome, so retries show up as counts above 1.
    pub prompts: BTreeMap<String, u64>,
    /// Requests per top-level body field beyond `model` and `messages` (`stream`,
    /// `temperature`, `tools`, ...): every request whose body parsed and validated.
    pub params: BTreeMap<String, u64>,
    /// Requests per non-standard request header name (`anthropic-beta`, a gateway's own; not
    /// `content-type`, the key's header, `anthropic-version`, ...): names only, never values.
    pub headers: BTreeMap<String, u64>,
    /// Files uploaded (`POST /v1/files`).
    pub files_uploaded: u64,
    /// Batch API batches created, both providers (a failed validation included).
    pub batches_created: u64,
    /// The requests of the batches created, summed.
    pub batch_requests: u64,
    /// Batches a cancel was accepted for (once per batch).
    pub batches_cancelled: u64,
}

/// How one request ended, as counted in [`MockStats::by_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Status(u16),
    Reset,
    Cut,
}

/// Status codes the mock can answer with; each has its own counter.
const STATUSES: [u16; 13] = [
    200, 400, 401, 404, 405, 409, 413, 429, 500, 502, 503, 529, 0,
];

/// Paths with a dedicated counter; anything else goes to `other_paths`.
pub(crate) const OPENAI_PATH: &str = "/v1/chat/completions";
pub(crate) const ANTHROPIC_PATH: &str = "/v1/messages";

/// Live counters behind [`MockStats`].
#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    statuses: [AtomicU64; STATUSES.len()],
    reset: AtomicU64,
    cut: AtomicU64,
    openai: AtomicU64,
    anthropic: AtomicU64,
    streamed: AtomicU64,
    files_uploaded: AtomicU64,
    batches_created: AtomicU64,
    batch_requests: AtomicU64,
    batches_cancelled: AtomicU64,
    other_paths: Mutex<BTreeMap<String, u64>>,
    prompts: Mutex<BTreeMap<String, u64>>,
    params: Mutex<BTreeMap<String, u64>>,
    headers: Mutex<BTreeMap<String, u64>>,
}

/// Headers every client sends, or the providers define: not counted in `MockStats::headers`.
const STANDARD_HEADERS: [&str; 15] = [
    "host",
    "content-type",
    "content-length",
    "user-agent",
    "accept",
    "accept-encoding",
    "connection",
    "transfer-encoding",
    "te",
    "expect",
    "keep-alive",
    "authorization",
    "x-api-key",
    "api-key",
    "anthropic-version",
];

/// Adds one to each name's count, under one lock.
fn count_names<'a>(map: &Mutex<BTreeMap<String, u64>>, names: impl Iterator<Item = &'a str>) {
    let mut names = names.peekable();
    if names.peek().is_none() {
        return;
    }
    let mut map = lock(map);
    for name in names {
        match map.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                map.insert(name.to_string(), 1);
            }
        }
    }
}

impl Stats {
    /// Counts an API request on `path`.
    pub(crate) fn request(&self, path: &str) {
        self.requests.fetch_add(1, Relaxed);
        match path {
            OPENAI_PATH => self.openai.fetch_add(1, Relaxed),
            ANTHROPIC_PATH => self.anthropic.fetch_add(1, Relaxed),
            // Unknown paths are rare (404s), so a mutex is fine there.
            _ => {
                *lock(&self.other_paths).entry(path.to_string()).or_default() += 1;
                0
            }
        };
    }

    /// Counts how a request ended.
    pub(crate) fn outcome(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Reset => &self.reset,
            Outcome::Cut => &self.cut,
            Outcome::Status(code) => {
                // Index 0 is never a real status; unexpected codes are lumped there rather than lost.
                let i = STATUSES
                    .iter()
                    .position(|&s| s == code)
                    .unwrap_or(STATUSES.len() - 1);
                &self.statuses[i]
            }
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn file_uploaded(&self) {
        self.files_uploaded.fetch_add(1, Relaxed);
    }

    /// A batch of `requests` requests was created.
    pub(crate) fn batch_created(&self, requests: u64) {
        self.batches_created.fetch_add(1, Relaxed);
        self.batch_requests.fetch_add(requests, Relaxed);
    }

    pub(crate) fn batch_cancelled(&self) {
        self.batches_cancelled.fetch_add(1, Relaxed);
    }

    pub(crate) fn streamed(&self) {
        self.streamed.fetch_add(1, Relaxed);
    }

    /// Counts a request's top-level body fields (beyond model and messages).
    pub(crate) fn params(&self, fields: &[String]) {
        count_names(&self.params, fields.iter().map(String::as_str));
    }

    /// Counts a request's non-standard header names.
    pub(crate) fn headers(&self, headers: &hyper::HeaderMap) {
        let names = headers
            .keys()
            .map(|name| name.as_str())
            .filter(|name| !STANDARD_HEADERS.contains(name));
        count_names(&self.headers, names);
    }

    pub(crate) fn prompt(&self, text: &str) {
        let mut prompts = lock(&self.prompts);
        match prompts.get_mut(text) {
            Some(n) => *n += 1,
            None => {
                prompts.insert(text.to_string(), 1);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> MockStats {
        let mut by_status = BTreeMap::new();
        for (code, n) in STATUSES.iter().zip(&self.statuses) {
            let n = n.load(Relaxed);
            if n > 0 {
                let key = if *code == 0 {
                    "other".to_string()
                } else {
                    code.to_string()
                };
                by_status.insert(key, n);
            }
        }
        for (key, n) in [("reset", &self.reset), ("cut", &self.cut)] {
            let n = n.load(Relaxed);
            if n > 0 {
                by_status.insert(key.to_string(), n);
            }
        }
        let mut by_path = lock(&self.other_paths).clone();
        for (key, n) in [
            (OPENAI_PATH, &self.openai),
            (ANTHROPIC_PATH, &self.anthropic),
        ] {
            let n = n.load(Relaxed);
            if n > 0 {
                by_path.insert(key.to_string(), n);
            }
        }
        MockStats {
            requests: self.requests.load(Relaxed),
            by_status,
            by_path,
            streamed: self.streamed.load(Relaxed),
            prompts: lock(&self.prompts).clone(),
            params: lock(&self.params).clone(),
            headers: lock(&self.headers).clone(),
            files_uploaded: self.files_uploaded.load(Relaxed),
            batches_created: self.batches_created.load(Relaxed),
            batch_requests: self.batch_requests.load(Relaxed),
            batches_cancelled: self.batches_cancelled.load(Relaxed),
        }
    }

    pub(crate) fn reset(&self) {
        for n in self.statuses.iter().chain([
            &self.requests,
            &self.reset,
            &self.cut,
            &self.openai,
            &self.anthropic,
            &self.streamed,
            &self.files_uploaded,
            &self.batches_created,
            &self.batch_requests,
            &self.batches_cancelled,
        ]) {
            n.store(0, Relaxed);
        }
        lock(&self.other_paths).clear();
        lock(&self.prompts).clear();
        lock(&self.params).clear();
        lock(&self.headers).clear();
    }
}

/// A poisoned counter map is still a valid map; keep counting rather than panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_resets() {
        let s = Stats::default();
        s.request(OPENAI_PATH);
        s.request("/nope");
        s.outcome(Outcome::Status(200));
        s.outcome(Outcome::Status(404));
        s.outcome(Outcome::Cut);
        s.prompt("a");
        s.prompt("a");
        s.file_uploaded();
        s.batch_created(3);
        s.batch_created(2);
        s.batch_cancelled();
        s.params(&["stream".to_string(), "seed".to_string()]);
        s.params(&["stream".to_string()]);
        let mut headers = hyper::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("anthropic-beta", "x".parse().unwrap());
        headers.insert("x-secret-token", "hidden-value".parse().unwrap());
        s.headers(&headers);
        let snap = s.snapshot();
        assert_eq!(snap.params["stream"], 2);
        assert_eq!(snap.params["seed"], 1);
        assert_eq!(
            snap.headers.keys().collect::<Vec<_>>(),
            ["anthropic-beta", "x-secret-token"]
        );
        assert!(!serde_json::to_string(&snap)
            .unwrap()
            .contains("hidden-value"));
        assert_eq!(snap.requests, 2);
        assert_eq!(snap.by_status["200"], 1);
        assert_eq!(snap.by_status["cut"], 1);
        assert_eq!(snap.by_path["/nope"], 1);
        assert_eq!(snap.prompts["a"], 2);
        assert_eq!(snap.files_uploaded, 1);
        assert_eq!((snap.batches_created, snap.batch_requests), (2, 5));
        assert_eq!(snap.batches_cancelled, 1);
        s.reset();
        assert_eq!(s.snapshot(), MockStats::default());
    }
}
