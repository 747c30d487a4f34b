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
    /// Permits taken from outside (a cluster-wide pool): `None` for a run on its own, whose
    /// path this leaves as it was (one branch on `None`).
    lease: Option<Lease>,
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
            lease: None,
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

    /// A limiter whose run sends only on permits granted from outside ([`Limiter::grant`]): one
    /// of several processes sharing one limit (README, "Shards and Ray"). Until the first grant
    /// it sends nothing.
    pub fn leased(mut self, leased: bool) -> Self {
        self.lease = leased.then(Lease::new);
        self
    }

    /// A lease of permits from outside: send at `requests_per_second` and `tokens_per_second`
    /// (a negative rate: not limited) until `seconds` from now; a renewal replaces it. Returns
    /// false when this limiter takes no permits from outside.
    pub fn grant(&self, requests_per_second: f64, tokens_per_second: f64, seconds: f64) -> bool {
        match &self.lease {
            Some(lease) => {
                lease.grant(requests_per_second, tokens_per_second, seconds);
                true
            }
            None => false,
        }
    }

    /// The answers (and 429s among them) counted for a learned pace since the last call, for a
    /// leased limiter, whose pace is learned outside from all the sharers' answers; a limiter of
    /// its own hands them to its learner instead (then this returns what is not handed yet).
    pub fn take_answers(&self) -> (u64, u64) {
        let answers = self.unseen.swap(0, Ordering::Relaxed);
        let limited = self.unseen_limited.swap(0, Ordering::Relaxed).min(answers);
        (answers, limited)
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
        if let Some(lease) = &self.lease {
            lease.take(estimated_tokens).await;
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
        if self.lease.is_some() {
            // One of several processes sharing a limit: the pace is learned for all of them
            // from everybody's answers (`take_answers`), and comes back in the leases.
            return;
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

/// How long a request waiting for a lease sleeps before it looks again (a renewal also wakes it).
const LEASE_POLL: Duration = Duration::from_millis(50);

/// Permits leased from outside: a share of a cluster-wide limit, as rates, for a short time.
///
/// Requests are spaced `1 / rate` apart and charged their tokens at the token rate, each at the
/// later of its two times (no burst: a share of a limit is not the limit's bucket). A request
/// whose time falls after the lease's end waits for the next lease; when leases stop coming
/// (the pool is gone, or this process lost its share) the run sends nothing. What the lease
/// did not use is not kept: the pool gives an expired lease's share to the others.
struct Lease {
    state: Mutex<LeaseState>,
    renewed: tokio::sync::Notify,
}

struct LeaseState {
    /// Requests per second; negative: not limited; 0: wait.
    requests: f64,
    /// Tokens per second; negative: not limited; 0: wait.
    tokens: f64,
    until: Instant,
    next_request: Instant,
    next_token: Instant,
    /// The rates the requests and tokens booked so far were spaced at (0: none booked): what
    /// `next_request` and `next_token` are owed at.
    booked_requests: f64,
    booked_tokens: f64,
}

impl Lease {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(LeaseState {
                requests: 0.0,
                tokens: 0.0,
                until: now,
                next_request: now,
                next_token: now,
                booked_requests: 0.0,
                booked_tokens: 0.0,
            }),
            renewed: tokio::sync::Notify::new(),
        }
    }

    fn grant(&self, requests: f64, tokens: f64, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.clamp(0.0, 3600.0)
        } else {
            0.0
        };
        {
            let mut s = self.state.lock().unwrap();
            let now = Instant::now();
            let (requests, tokens) = (lease_rate(requests), lease_rate(tokens));
            // What the requests booked so far owe is owed at the new rates, whatever leases
            // (waits, no limit) came between: one booked on a tiny share must not hold later,
            // larger leases back.
            (s.next_request, s.booked_requests) =
                rebase(s.next_request, now, s.booked_requests, requests);
            (s.next_token, s.booked_tokens) = rebase(s.next_token, now, s.booked_tokens, tokens);
            s.requests = requests;
            s.tokens = tokens;
            s.until = now + Duration::from_secs_f64(seconds);
        }
        self.renewed.notify_waiters();
    }

    /// This request's time within the current lease (it is then charged), or None: wait for
    /// the next lease.
    fn book(&self, tokens: u32) -> Option<Instant> {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        if now >= s.until || s.requests == 0.0 || s.tokens == 0.0 {
            return None;
        }
        let mut at = now;
        if s.requests > 0.0 {
            at = at.max(s.next_request);
        }
        if s.tokens > 0.0 {
            at = at.max(s.next_token);
        }
        if at >= s.until {
            return None;
        }
        if s.requests > 0.0 {
            s.next_request = at + Duration::from_secs_f64(1.0 / s.requests);
            s.booked_requests = s.requests;
        }
        if s.tokens > 0.0 {
            s.next_token = at + Duration::from_secs_f64(f64::from(tokens.max(1)) / s.tokens);
            s.booked_tokens = s.tokens;
        }
        Some(at)
    }

    async fn take(&self, tokens: u32) {
        loop {
            let renewed = self.renewed.notified();
            match self.book(tokens) {
                Some(at) => {
                    if at > Instant::now() {
                        tokio::time::sleep_until(at).await;
                    }
                    return;
                }
                None => {
                    let _ = tokio::time::timeout(LEASE_POLL, renewed).await;
                }
            }
        }
    }
}

/// A leased rate as booked: below [`MIN_LEASE_RATE`] (or not a number) it is 0, wait.
fn lease_rate(rate: f64) -> f64 {
    if rate.is_nan() || (0.0..MIN_LEASE_RATE).contains(&rate) {
        0.0
    } else {
        rate
    }
}

/// The slowest leased rate that is booked (a request a thousand seconds); slower is a wait.
const MIN_LEASE_RATE: f64 = 1e-3;

/// The next free time `next`, booked at rate `booked`, moved to what the same debt takes at a
/// new lease's `rate`, with the rate it is now owed at; a lease that books nothing (a wait, no
/// limit) leaves both.
fn rebase(next: Instant, now: Instant, booked: f64, rate: f64) -> (Instant, f64) {
    if rate <= 0.0 {
        return (next, booked);
    }
    if next <= now || booked <= 0.0 {
        return (next, rate);
    }
    let debt = next.saturating_duration_since(now).as_secs_f64() * booked;
    (now + Duration::from_secs_f64(debt / rate), rate)
}

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
    async fn a_leased_limiter_sends_at_its_lease_and_waits_when_it_ends() {
        let limiter = Limiter::new(4, None, None).leased(true);
        // No lease yet: nothing goes.
        let waited = tokio::time::timeout(Duration::from_millis(120), limiter.wait_turn(1)).await;
        assert!(waited.is_err(), "sent without a lease");
        // 100 requests a second for 0.3 s: ~30 requests, evenly spaced, then a wait.
        assert!(limiter.grant(100.0, -1.0, 0.3));
        let start = std::time::Instant::now();
        let mut sent = 0;
        while tokio::time::timeout(Duration::from_millis(150), limiter.wait_turn(1))
            .await
            .is_ok()
        {
            sent += 1;
        }
        assert!(
            (29..=31).contains(&sent),
            "{sent} sent in {:?}",
            start.elapsed()
        );
        // Tokens: 1,000 a second, 250 a request -> one every 0.25 s (the third at 0.5 s, within
        // the lease's 0.7 s).
        limiter.grant(-1.0, 1000.0, 0.7);
        let start = std::time::Instant::now();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(2), limiter.wait_turn(250))
                .await
                .expect("a request within its lease waited past it");
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(490) && elapsed < Duration::from_millis(600),
            "{elapsed:?}"
        );
        // A limiter of its own takes no lease.
        assert!(!Limiter::new(1, None, None).grant(1.0, 1.0, 1.0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_booked_on_a_tiny_share_does_not_hold_back_the_next_leases() {
        let limiter = Limiter::new(4, None, None).leased(true);
        // A share of 0.01 a second (the pool's leftover while others shrink): the request goes
        // at once and the next would be 100 s later ...
        limiter.grant(0.01, -1.0, 1.0);
        tokio::time::timeout(Duration::from_millis(100), limiter.wait_turn(1))
            .await
            .expect("the first request of a lease goes at once");
        // ... but the next lease is the fair share: that debt is 10 ms at 100 a second.
        limiter.grant(100.0, -1.0, 1.0);
        tokio::time::timeout(Duration::from_millis(100), limiter.wait_turn(1))
            .await
            .expect("held back by a request booked on the tiny share");
        // A share too small to book is a wait, not a request centuries later.
        limiter.grant(1e-300, -1.0, 1.0);
        let waited = tokio::time::timeout(Duration::from_millis(100), limiter.wait_turn(1)).await;
        assert!(waited.is_err());
        // Nor does one booked on a tiny share with a wait (or no limit) between the leases, for
        // requests or for tokens.
        for (requests, tokens) in [(0.01, -1.0), (-1.0, 1.0)] {
            limiter.grant(requests, tokens, 1.0);
            tokio::time::timeout(Duration::from_millis(100), limiter.wait_turn(10))
                .await
                .expect("the first request of a lease goes at once");
            limiter.grant(0.0, 0.0, 0.05);
            limiter.grant(-1.0, -1.0, 0.05);
            limiter.grant(100.0, 10_000.0, 1.0);
            tokio::time::timeout(Duration::from_millis(100), limiter.wait_turn(10))
                .await
                .expect("held back by a request booked on a tiny share before a wait");
        }
    }

    #[test]
    fn a_renewal_keeps_what_was_booked_on_the_lease_before() {
        // 20 requests booked at 100 a second run 0.2 s ahead; a renewal at the same rate keeps
        // them (the next is 0.2 s out), one at twice the rate owes half as long.
        let lease = Lease::new();
        lease.grant(100.0, -1.0, 1.0);
        let start = Instant::now();
        for _ in 0..20 {
            lease.book(1).expect("within the lease");
        }
        lease.grant(100.0, -1.0, 1.0);
        let next = lease.book(1).unwrap().duration_since(start);
        assert!(next >= Duration::from_millis(195), "{next:?}");
        lease.grant(200.0, -1.0, 1.0);
        let next = lease.book(1).unwrap().duration_since(start);
        assert!(
            (Duration::from_millis(100)..Duration::from_millis(150)).contains(&next),
            "{next:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_leased_limiter_counts_its_answers_for_the_pool_and_learns_no_pace_of_its_own() {
        let leased = Limiter::new(4, None, None).leased(true);
        let own = Limiter::new(4, None, None);
        // Two seconds of answers, half of them 429s: a limiter of its own learns a pace ...
        for i in 0..800u64 {
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let kind = if i % 2 == 0 {
                Answer::Ok
            } else {
                Answer::RateLimited
            };
            for limiter in [&leased, &own] {
                limiter.on_response(&answer(Instant::now(), kind, None));
            }
        }
        assert!(
            matches!(own.pacing(), Pacing::Learned { .. }),
            "{:?}",
            own.pacing()
        );
        // ... a leased one only counts them for the pool, which learns from every sharer's.
        assert_eq!(leased.pacing(), Pacing::Unpaced);
        assert_eq!(leased.take_answers(), (800, 400));
        assert_eq!(leased.take_answers(), (0, 0));
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
