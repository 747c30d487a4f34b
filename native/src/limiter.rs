//! Run-wide pacing: the user's RPM/TPM limits, the server's stated or learned limit, one shared
//! wait when a limit is used up, and the concurrency slots.
//!
//! The policy (README "How requests are sent"):
//! - A limit the server states in its headers (`x-ratelimit-limit-requests`,
//!   `anthropic-ratelimit-requests-limit`, per minute) paces every request evenly to it, from
//!   the first response that states it, without waiting for 429s.
//! - A limit it does not state is learned from the share of 429s among recent responses
//!   ([`crate::adaptive`]).
//! - A 429 that says the limit is used up (a stated `-remaining` of 0, or a hint of
//!   [`LONG_HINT`] or more) makes the whole run wait for the hint: one wait for everybody, which
//!   429s of requests sent before it began cannot extend.
//! - Any other 429 or 529 is a passing fault: that request backs off and retries, the others go
//!   on (see executor.rs).

use crate::adaptive::AdaptiveRate;
use crate::headers::StatedLimits;
use crate::pacer::Pacer;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A 429 asking for this long or longer says the limit is used up (a closed fixed window, a
/// gateway's minute), even when no header states it.
pub const LONG_HINT: Duration = Duration::from_secs(5);
/// A run-wide wait asked without a hint.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// The longest run-wide wait; a later 429 asks again if the limit still holds.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// How one attempt ended, as far as pacing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx.
    Ok,
    /// A 429 (not a quota error).
    RateLimited,
    /// Any other status, 529 included: not about this run's rate.
    OtherStatus,
    /// No response at all (connection, timeout): says nothing about limits.
    NoResponse,
}

/// One attempt's answer and what came with it.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// When the request left (after its turn).
    pub sent: Instant,
    pub answer: Answer,
    /// The server's retry hint (Retry-After and the like).
    pub hint: Option<Duration>,
    pub limits: Option<StatedLimits>,
}

/// Where the run's pace comes from, for progress lines and summaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// No server limit seen.
    Unpaced,
    /// The server states its limit in headers: requests per minute.
    Stated { rpm: u32 },
    /// Learned from 429s: requests per second.
    Learned { per_second: f64 },
}

/// Every request of a run waits here for its turn.
pub struct Limiter {
    slots: Arc<Semaphore>,
    concurrency: usize,
    /// The user's `--rpm`: strict over any sliding minute.
    rpm: Option<Pacer>,
    tpm: Option<TokenQuota>,
    /// One waiter at a time asks governor for tokens, the rest queue here in FIFO order.
    tpm_gate: tokio::sync::Mutex<()>,
    /// The server's pace: stated when it states one, else learned.
    server: Pacer,
    /// The requests per minute the server last stated; 0 until it states one.
    stated_rpm: AtomicU32,
    learned: Mutex<AdaptiveRate>,
    /// Answers and 429s not yet handed to `learned`: counted here and handed over once a tick,
    /// so that a response costs two atomic adds, not a lock.
    unseen: AtomicU64,
    unseen_limited: AtomicU64,
    /// Nanoseconds from `born` at which the counts are next handed over.
    next_tick_ns: AtomicU64,
    born: Instant,
    pause: Mutex<Pause>,
}

/// How often counted answers are handed to the learned pace.
const TICK_NS: u64 = 50_000_000;

struct Pause {
    until: Option<Instant>,
    /// When the latest run-wide wait began: 429s of requests sent before it are old news.
    since: Instant,
}

struct TokenQuota {
    limiter: DefaultDirectRateLimiter,
    /// The bucket's capacity; a single charge above it would never fit, so it is clamped.
    burst: NonZeroU32,
}

impl Limiter {
    pub fn new(concurrency: usize, rpm: Option<u32>, tpm: Option<u32>) -> Self {
        let now = Instant::now();
        let concurrency = concurrency.max(1);
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            rpm: rpm.map(Pacer::per_minute),
            tpm: tpm.map(token_quota),
            tpm_gate: tokio::sync::Mutex::new(()),
            server: Pacer::unpaced(),
            stated_rpm: AtomicU32::new(0),
            learned: Mutex::new(AdaptiveRate::new(now)),
            unseen: AtomicU64::new(0),
            unseen_limited: AtomicU64::new(0),
            next_tick_ns: AtomicU64::new(0),
            born: now,
            pause: Mutex::new(Pause {
                until: None,
                since: now,
            }),
        }
    }

    /// A slot in the concurrency window; held for the whole life of a row, retries included.
    pub async fn acquire_slot(&self) -> Slot {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Waits until this request may be sent: after any run-wide wait, the user's RPM and TPM,
    /// then the server's pace.
    pub async fn wait_turn(&self, estimated_tokens: u32) {
        self.wait_pause().await;
        if let Some(rpm) = &self.rpm {
            rpm.wait().await;
        }
        if let Some(tpm) = &self.tpm {
            let _turn = self.tpm_gate.lock().await;
            // governor refuses a charge above the bucket's capacity, so a large request is
            // charged in capacity-sized pieces: it waits as long as its tokens need.
            let mut remaining = estimated_tokens.max(1);
            while let Some(piece) = NonZeroU32::new(remaining.min(tpm.burst.get())) {
                // Cannot fail: the piece never exceeds the capacity.
                let _ = tpm.limiter.until_n_ready(piece).await;
                remaining -= piece.get();
            }
        }
        self.server.wait().await;
        // A wait that began while this request queued holds it too.
        self.wait_pause().await;
    }

    async fn wait_pause(&self) {
        loop {
            let until = self.pause.lock().unwrap().until;
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// Learns from one attempt's answer (see the module's policy).
    pub fn on_response(&self, response: &Response) {
        if let Some(rpm) = response.limits.and_then(|l| l.requests_per_minute) {
            // Read before writing: the same value comes with every response.
            if rpm > 0 && self.stated_rpm.load(Ordering::Relaxed) != rpm {
                self.stated_rpm.store(rpm, Ordering::Relaxed);
                self.server.set_rate(Some(f64::from(rpm) / 60.0));
                tracing::info!(rpm, "pacing to the server's stated limit");
            }
        }
        let stated = self.stated_rpm.load(Ordering::Relaxed) > 0;
        if response.answer == Answer::RateLimited {
            let used_up = response.limits.is_some_and(|l| l.exhausted)
                || response.hint.is_some_and(|h| h >= LONG_HINT);
            if used_up {
                self.wait_for_everybody(response.sent, response.hint.unwrap_or(DEFAULT_PAUSE));
            }
        }
        if stated || response.answer == Answer::NoResponse {
            return;
        }
        self.unseen.fetch_add(1, Ordering::Relaxed);
        if response.answer == Answer::RateLimited {
            self.unseen_limited.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let at = now.saturating_duration_since(self.born).as_nanos() as u64;
        if at < self.next_tick_ns.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut learned) = self.learned.try_lock() else {
            return; // another answer is handing the counts over right now
        };
        self.next_tick_ns.store(at + TICK_NS, Ordering::Relaxed);
        let responses = self.unseen.swap(0, Ordering::Relaxed);
        let limited = self
            .unseen_limited
            .swap(0, Ordering::Relaxed)
            .min(responses);
        if let Some(rate) = learned.record(responses, limited, now) {
            // A stated limit may have arrived meanwhile; it takes precedence.
            if self.stated_rpm.load(Ordering::Relaxed) == 0 {
                self.server.set_rate(rate);
                tracing::info!(?rate, "pace learned from 429s");
            }
        }
    }

    /// The whole run waits `delay`, once: a 429 of a request sent before the current wait
    /// began says nothing new and cannot extend or renew it.
    fn wait_for_everybody(&self, sent: Instant, delay: Duration) {
        let now = Instant::now();
        let until = now + delay.min(MAX_PAUSE);
        let mut pause = self.pause.lock().unwrap();
        if sent < pause.since {
            return;
        }
        match pause.until {
            Some(current) if current >= until => {}
            Some(current) if current > now => pause.until = Some(until),
            _ => {
                pause.until = Some(until);
                pause.since = now;
            }
        }
    }

    /// Where the pace comes from now.
    pub fn pacing(&self) -> Pacing {
        match self.stated_rpm.load(Ordering::Relaxed) {
            0 => match self.server.rate() {
                Some(per_second) => Pacing::Learned { per_second },
                None => Pacing::Unpaced,
            },
            rpm => Pacing::Stated { rpm },
        }
    }

    /// The concurrency window (for stats).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

/// Tokens refill continuously at `tpm`/minute; the bucket holds one second's worth, so a run
/// starts at the limit's pace instead of spending a minute's budget in one burst.
fn token_quota(tpm: u32) -> TokenQuota {
    let per_token = Duration::from_secs_f64(60.0 / f64::from(tpm.max(1)));
    let burst = NonZeroU32::new((tpm / 60).max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(per_token)
        .expect("period is positive")
        .allow_burst(burst);
    TokenQuota {
        limiter: RateLimiter::direct(quota),
        burst,
    }
}

/// A held concurrency slot: a permit of the run's semaphore, given back when dropped.
pub type Slot = OwnedSemaphorePermit;

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(sent: Instant, answer: Answer, hint: Option<Duration>) -> Response {
        Response {
            sent,
            answer,
            hint,
            limits: None,
        }
    }

    fn stated(rpm: u32, exhausted: bool) -> Option<StatedLimits> {
        Some(StatedLimits {
            requests_per_minute: Some(rpm),
            tokens_per_minute: None,
            exhausted,
        })
    }

    /// A 429 whose headers say the limit is used up, asking for `ms` milliseconds.
    fn used_up(sent: Instant, ms: u64) -> Response {
        let mut r = answer(sent, Answer::RateLimited, Some(Duration::from_millis(ms)));
        r.limits = stated(6000, true);
        r
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_used_up_limit_makes_everybody_wait_once() {
        let limiter = Limiter::new(4, None, None);
        let before = Instant::now();
        limiter.on_response(&used_up(before, 200));
        let start = Instant::now();
        limiter.wait_turn(10).await;
        assert!(start.elapsed() >= Duration::from_millis(190));
        // 429s of requests sent before that wait began do not start another one.
        limiter.on_response(&used_up(before, 200));
        let start = Instant::now();
        limiter.wait_turn(10).await;
        assert!(start.elapsed() < Duration::from_millis(100), "chained wait");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_429_with_room_left_or_a_short_hint_holds_nobody() {
        let limiter = Limiter::new(4, None, None);
        let mut r = answer(
            Instant::now(),
            Answer::RateLimited,
            Some(Duration::from_secs(1)),
        );
        r.limits = stated(600_000, false);
        limiter.on_response(&r);
        // Unstated, a one-second hint: a passing fault as far as the run is concerned.
        let other = Limiter::new(4, None, None);
        other.on_response(&answer(
            Instant::now(),
            Answer::RateLimited,
            Some(Duration::from_secs(1)),
        ));
        let start = Instant::now();
        limiter.wait_turn(10).await;
        other.wait_turn(10).await;
        assert!(start.elapsed() < Duration::from_millis(100));
        // A long hint says the limit is used up even without headers.
        other.on_response(&answer(
            Instant::now(),
            Answer::RateLimited,
            Some(LONG_HINT),
        ));
        assert!(other.pause.lock().unwrap().until.is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stated_limit_paces_from_the_first_response_that_states_it() {
        let limiter = Limiter::new(4, None, None);
        assert_eq!(limiter.pacing(), Pacing::Unpaced);
        let mut r = answer(Instant::now(), Answer::Ok, None);
        r.limits = stated(6000, false); // 100 a second
        limiter.on_response(&r);
        assert_eq!(limiter.pacing(), Pacing::Stated { rpm: 6000 });
        let start = std::time::Instant::now();
        for _ in 0..51 {
            limiter.wait_turn(1).await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(495), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(530), "{elapsed:?}");
        // The limit halves: the pace follows at the next response.
        r.limits = stated(3000, false);
        limiter.on_response(&r);
        assert_eq!(limiter.pacing(), Pacing::Stated { rpm: 3000 });
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rpm_spaces_requests_evenly_at_the_full_rate() {
        let limiter = Limiter::new(4, Some(6000), None); // one per 10 ms
        let start = std::time::Instant::now();
        for _ in 0..201 {
            limiter.wait_turn(1).await;
        }
        let elapsed = start.elapsed();
        // Never faster than the rate, and no time lost to late wake-ups.
        assert!(elapsed >= Duration::from_millis(1_990), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2_015), "{elapsed:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tpm_paces_by_tokens_including_charges_above_the_burst() {
        // 60,000 tokens/min = 1,000/s with a one-second bucket: 3,000 tokens take ~2 s.
        let limiter = Limiter::new(1, None, Some(60_000));
        let start = std::time::Instant::now();
        for _ in 0..2 {
            limiter.wait_turn(1_500).await; // above the 1,000-token bucket
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1_900) && elapsed < Duration::from_millis(2_600),
            "{elapsed:?}"
        );
    }
}
