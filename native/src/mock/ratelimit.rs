//! The mock's request rate limit: a token bucket of capacity R refilled at R tokens per second.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the bucket says about one request; the numbers feed the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    /// Whether the request may proceed (a token was taken).
    pub allowed: bool,
    /// The bucket's capacity (`x-ratelimit-limit-requests`).
    pub limit: u32,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Time until the bucket is full again (`x-ratelimit-reset-requests`).
    pub until_full: Duration,
    /// Time until one token is available (`retry-after-ms` on a 429); zero when allowed.
    pub until_token: Duration,
}

/// A token bucket; refill is fractional so that the long-run rate is exactly R per second.
pub(crate) struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub(crate) fn new(rps: u32) -> Self {
        let rate = f64::from(rps.max(1));
        TokenBucket {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn acquire(&self) -> Decision {
        self.acquire_at(Instant::now())
    }

    fn acquire_at(&self, now: Instant) -> Decision {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.rate);
        *last = now;
        let allowed = *tokens >= 1.0;
        if allowed {
            *tokens -= 1.0;
        }
        let secs = |missing: f64| Duration::from_secs_f64((missing / self.rate).max(0.0));
        Decision {
            allowed,
            limit: self.rate as u32,
            remaining: tokens.floor() as u32,
            until_full: secs(self.rate - *tokens),
            until_token: if allowed {
                Duration::ZERO
            } else {
                secs(1.0 - *tokens)
            },
        }
    }
}

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do: "20ms", "1.5s", "1m2s".
pub(crate) fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// `retry-after` in whole seconds, rounded up and at least 1, as the real APIs send it.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_capacity_then_refills_fractionally() {
        let b = TokenBucket::new(4);
        let t0 = Instant::now();
        for left in (0..4).rev() {
            let d = b.acquire_at(t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = b.acquire_at(t0);
        assert!(!d.allowed);
        assert_eq!(d.until_token, Duration::from_millis(250));
        assert_eq!(d.until_full, Duration::from_secs(1));
        // Half a token after 125 ms: still refused, 125 ms to go.
        let d = b.acquire_at(t0 + Duration::from_millis(125));
        assert!(!d.allowed);
        assert!((d.until_token.as_secs_f64() - 0.125).abs() < 1e-6);
        assert!(b.acquire_at(t0 + Duration::from_millis(250)).allowed);
    }

    #[test]
    fn header_formats() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_secs(62)), "1m2s");
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
