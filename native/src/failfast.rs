//! Fail fast: when the first rows of a run all fail with the same permanent error (an unknown
//! model, a gateway refusing the key with a 400 rather than a 401), every other row would fail
//! the same way, so the run stops after a few instead of sending them all.

use crate::error::ErrorType;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// How many rows must fail alike before the run stops.
pub const FAIL_FAST_ROWS: usize = 5;

/// A failure's kind, status and message: rows fail alike when all three are equal.
type Failure = (ErrorType, Option<u16>, String);

/// Watches the first settled rows of a run.
pub struct FailFast {
    /// False once a row succeeded or failed differently (or when disabled): nothing to watch.
    watching: AtomicBool,
    /// How many failed alike so far, and how.
    seen: Mutex<(usize, Option<Failure>)>,
}

impl FailFast {
    pub fn new(enabled: bool) -> Self {
        Self {
            watching: AtomicBool::new(enabled),
            seen: Mutex::new((0, None)),
        }
    }

    /// A row that succeeded: the requests are fine, stop watching.
    pub fn ok(&self) {
        self.watching.store(false, Ordering::Relaxed);
    }

    /// A row that failed for good. Returns the run's stop message when this was the
    /// [`FAIL_FAST_ROWS`]th alike in a row from the start.
    pub fn failed(&self, kind: ErrorType, status: Option<u16>, message: &str) -> Option<String> {
        if !self.watching.load(Ordering::Relaxed) {
            return None;
        }
        let permanent = !kind.is_retryable()
            && !kind.is_fatal()
            && !matches!(kind, ErrorType::Cancelled | ErrorType::Expired);
        let mut seen = self.seen.lock().unwrap();
        let same = seen
            .1
            .as_ref()
            .is_none_or(|(k, s, m)| *k == kind && *s == status && m == message);
        if !permanent || !same {
            self.watching.store(false, Ordering::Relaxed);
            return None;
        }
        seen.0 += 1;
        seen.1
            .get_or_insert_with(|| (kind, status, message.to_string()));
        if seen.0 < FAIL_FAST_ROWS {
            return None;
        }
        self.watching.store(false, Ordering::Relaxed);
        let status = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
        Some(format!(
            "the first {FAIL_FAST_ROWS} rows all failed with the same error, so the rest were not \
             sent (--no-fail-fast sends every row): {kind}{status}: {message}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorType::*;

    #[test]
    fn stops_after_the_same_permanent_error_from_the_start() {
        let ff = FailFast::new(true);
        for _ in 1..FAIL_FAST_ROWS {
            assert_eq!(ff.failed(NotFound, Some(404), "model x not found"), None);
        }
        let stop = ff
            .failed(NotFound, Some(404), "model x not found")
            .expect("stops");
        assert!(
            stop.contains("not_found (HTTP 404): model x not found"),
            "{stop}"
        );
        assert!(stop.contains("--no-fail-fast"));
    }

    #[test]
    fn a_success_a_different_error_or_a_retryable_one_disarms_it() {
        let cases: [&dyn Fn(&FailFast); 3] = [
            &|ff| ff.ok(),
            &|ff| assert_eq!(ff.failed(BadRequest, Some(400), "other"), None),
            &|ff| assert_eq!(ff.failed(ServerError, Some(500), "boom"), None),
        ];
        for interrupt in cases {
            let ff = FailFast::new(true);
            assert_eq!(ff.failed(BadRequest, Some(400), "bad"), None);
            interrupt(&ff);
            for _ in 0..FAIL_FAST_ROWS * 2 {
                assert_eq!(ff.failed(BadRequest, Some(400), "bad"), None);
            }
        }
        let off = FailFast::new(false);
        for _ in 0..FAIL_FAST_ROWS * 2 {
            assert_eq!(off.failed(BadRequest, Some(400), "bad"), None);
        }
    }
}
