//! The mock's request rate limit: a token bucket of capacity R refilled at R tokens per second,
//! R changing over time when a schedule is configured. Enforced per second, stated per minute.
//!
//! Both providers state request limits per minute (OpenAI `x-ratelimit-limit-requests`,
//! Anthropic `anthropic-ratelimit-requests-limit`) and document that a per-minute limit may be
//! enforced in shorter intervals (60 RPM as 1 per second). The mock does exactly that: it
//! enforces R per second and states a limit of 60 × R, so a client pacing at limit / 60 per
//! second runs at the rate in force.

use std::sync::Mutex;
use std::time::Duration;

/// What the bucket says about one request; the numbers feed the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    /// Whether the request may proceed (a token was taken).
    pub allowed: bool,
    /// Requests per minute: 60 × the rate in force (`x-ratelimit-limit-requests`,
    /// `anthropic-ratelimit-requests-limit`).
    pub limit: u32,
    /// The bucket's room after this request scaled to a minute, `floor(60 × tokens left)`, and 0
    /// exactly when the next request would be refused (less than one token left).
    pub remaining: u32,
    /// Time until the bucket is full again (`x-ratelimit-reset-requests`, and the time of
    /// `anthropic-ratelimit-requests-reset`).
    pub until_full: Duration,
    /// Time until one token is available (`retry-after-ms` on a 429); zero when allowed.
    pub until_token: Duration,
}

struct State {
    tokens: f64,
    /// Tokens per second, also the capacity.
    rate: f64,
    /// Server-clock seconds of the last refill.
    last: f64,
    /// Index into `TokenBucket::changes` of the next change to apply.
    next: usize,
}

/// A token bucket; refill is fractional so that the long-run rate is exactly R per second.
/// Times are seconds on the server's clock (see `Shared::clock`).
pub(crate) struct TokenBucket {
    /// The changes of rate after time 0: (start seconds, rate), ascending.
    changes: Vec<(f64, f64)>,
    state: Mutex<State>,
}

impl TokenBucket {
    /// A bucket of `base` per second before the schedule's first start (or from 0 if it starts
    /// there), full at time 0. `None` when neither sets a rate.
    pub(crate) fn new(base: Option<u32>, schedule: &[(f64, u32)]) -> Option<Self> {
        let mut rate = base.map(|r| f64::from(r.max(1)));
        let mut changes = Vec::with_capacity(schedule.len());
        for &(start, rps) in schedule {
            let rps = f64::from(rps.max(1));
            if start <= 0.0 {
                rate = Some(rps);
            } else {
                changes.push((start, rps));
            }
        }
        let rate = rate.or_else(|| changes.first().map(|c| c.1))?;
        Some(TokenBucket {
            changes,
            state: Mutex::new(State {
                tokens: rate,
                rate,
                last: 0.0,
                next: 0,
            }),
        })
    }

    /// Takes one token if there is one, at `now` seconds on the server clock.
    pub(crate) fn acquire_at(&self, now: f64) -> Decision {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *state;
        let now = now.max(st.last);
        let refill = |st: &mut State, to: f64| {
            st.tokens = (st.tokens + (to - st.last) * st.rate).min(st.rate);
            st.last = to;
        };
        // Refill at each rate up to its end, then switch: capacity and refill become the new
        // rate, the tokens are clamped to it.
        while let Some(&(start, rate)) = self.changes.get(st.next) {
            if start > now {
                break;
            }
            refill(st, start);
            st.rate = rate;
            st.tokens = st.tokens.min(rate);
            st.next += 1;
        }
        refill(st, now);
        let allowed = st.tokens >= 1.0;
        if allowed {
            st.tokens -= 1.0;
        }
        let rate = st.rate;
        let secs = |missing: f64| Duration::from_secs_f64((missing / rate).max(0.0));
        Decision {
            allowed,
            limit: (60.0 * rate) as u32,
            remaining: if st.tokens < 1.0 {
                0
            } else {
                (60.0 * st.tokens).floor() as u32
            },
            until_full: secs(rate - st.tokens),
            until_token: if allowed {
                Duration::ZERO
            } else {
                secs(1.0 - st.tokens)
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
        let b = TokenBucket::new(Some(4), &[]).unwrap();
        let t0 = 0.0;
        for left in (0..4).rev() {
            let d = b.acquire_at(t0);
            assert!(d.allowed);
            assert_eq!(d.limit, 240);
            // Whole tokens left, scaled to a minute; 0 once under one token.
            assert_eq!(d.remaining, 60 * left);
        }
        let d = b.acquire_at(t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.until_token, Duration::from_millis(250));
        assert_eq!(d.until_full, Duration::from_secs(1));
        // Half a token after 125 ms: still refused, 125 ms to go, and remaining stays 0.
        let d = b.acquire_at(t0 + 0.125);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert!((d.until_token.as_secs_f64() - 0.125).abs() < 1e-6);
        assert!(b.acquire_at(t0 + 0.25).allowed);
        // 2.5 tokens after a further 625 ms: one taken, 1.5 left = 90 per minute.
        let d = b.acquire_at(t0 + 0.875);
        assert!(d.allowed);
        assert_eq!(d.remaining, 90);
    }

    #[test]
    fn no_rate_no_bucket() {
        assert!(TokenBucket::new(None, &[]).is_none());
        assert!(TokenBucket::new(None, &[(0.0, 3)]).is_some());
    }

    #[test]
    fn schedule_changes_capacity_and_refill() {
        // 10/s, from 1 s 2/s, from 3 s 10/s again.
        let b = TokenBucket::new(None, &[(0.0, 10), (1.0, 2), (3.0, 10)]).unwrap();
        assert_eq!(b.acquire_at(0.0).limit, 600);
        // At 1 s the 9 tokens left (full again) are clamped to the new capacity of 2.
        let d = b.acquire_at(1.0);
        assert!(d.allowed);
        assert_eq!(d.limit, 120);
        assert_eq!(d.remaining, 60);
        assert!(b.acquire_at(1.0).allowed);
        let d = b.acquire_at(1.0);
        assert!(!d.allowed);
        assert_eq!(d.until_token, Duration::from_millis(500));
        // Refill at 2/s: one token after 0.5 s.
        assert!(b.acquire_at(1.5).allowed);
        // Across the change at 3 s: 1.5 s at 2/s refills to 2 (capped), then 10/s for 0.5 s.
        let d = b.acquire_at(3.5);
        assert!(d.allowed);
        assert_eq!(d.limit, 600);
        assert_eq!(d.remaining, 6 * 60);
    }

    #[test]
    fn schedule_after_a_base_rate() {
        let b = TokenBucket::new(Some(1), &[(2.0, 5)]).unwrap();
        assert_eq!(b.acquire_at(0.0).limit, 60);
        assert!(!b.acquire_at(0.5).allowed);
        // Full at 1 token by 2 s, then 5/s: 1 + 5 × 0.2 = 2 tokens at 2.2 s.
        let d = b.acquire_at(2.2);
        assert!(d.allowed);
        assert_eq!(d.limit, 300);
        assert!(b.acquire_at(2.2).allowed);
        assert!(!b.acquire_at(2.2).allowed);
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
