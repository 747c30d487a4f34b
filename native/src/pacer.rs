//! Even spacing of requests at a rate that may change while the run goes on, optionally with a
//! strict guarantee over any sliding minute.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The length of the window a requests-per-minute limit counts in.
const MINUTE: Duration = Duration::from_secs(60);

/// Releases waiters one at a time, `interval` apart; an interval of zero lets everyone through.
///
/// Each waiter's time is the previous one's *scheduled* time plus the interval, not the time it
/// actually woke: a late wake-up (timer and scheduling, ~0.25 ms) does not push every later
/// request back, so a paced run keeps the full rate without a burst allowance. After an idle
/// spell the next request goes at once, never a burst of the time saved.
pub struct Pacer {
    /// Nanoseconds between two requests; 0 when not pacing (the fast path reads only this).
    interval_ns: AtomicU64,
    /// FIFO: one waiter at a time computes its time and sleeps until it, so that the next one
    /// sees the actual release of every earlier one.
    state: tokio::sync::Mutex<State>,
}

struct State {
    next: Option<Instant>,
    /// A strict limit's count and window, and the release times of its last `count` requests.
    window: Option<(usize, Duration, VecDeque<Instant>)>,
}

impl Pacer {
    /// A pacer that lets everyone through until [`Pacer::set_rate`] gives it a rate.
    pub fn unpaced() -> Self {
        Self {
            interval_ns: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(State {
                next: None,
                window: None,
            }),
        }
    }

    /// A strict requests-per-minute limit: evenly spaced, and never more than `rpm` releases in
    /// any 60 seconds, counted from the actual release times (a waiter that woke late cannot
    /// let a later one into the same minute).
    pub fn per_minute(rpm: u32) -> Self {
        Self::per_window(rpm, MINUTE)
    }

    /// At most `count` releases in any `window`, evenly spaced.
    fn per_window(count: u32, window: Duration) -> Self {
        let count = count.max(1);
        let pacer = Self::unpaced();
        pacer.set_rate(Some(f64::from(count) / window.as_secs_f64()));
        // Grows with the releases: a large limit allocates only as its window fills.
        let log = VecDeque::new();
        pacer
            .state
            .try_lock()
            .expect("a new pacer is not shared yet")
            .window = Some((count as usize, window, log));
        pacer
    }

    /// Sets the pace in requests per second; `None` (or a rate that is not positive) stops pacing.
    pub fn set_rate(&self, per_second: Option<f64>) {
        let ns = match per_second {
            Some(rate) if rate.is_finite() && rate > 0.0 => (1e9 / rate).clamp(1.0, 1e15) as u64,
            _ => 0,
        };
        self.interval_ns.store(ns, Ordering::Relaxed);
    }

    /// The pace in requests per second, if pacing.
    pub fn rate(&self) -> Option<f64> {
        match self.interval_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(1e9 / ns as f64),
        }
    }

    /// Waits for this request's turn.
    pub async fn wait(&self) {
        if self.interval_ns.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut state = self.state.lock().await;
        // Read again: the pace may have changed while this waiter queued.
        let interval = Duration::from_nanos(self.interval_ns.load(Ordering::Relaxed));
        let now = Instant::now();
        let mut at = state.next.map_or(now, |next| next.max(now));
        if let Some((count, window, released)) = &state.window {
            if released.len() >= *count {
                if let Some(oldest) = released.front() {
                    at = at.max(*oldest + *window);
                }
            }
        }
        tokio::time::sleep_until(at).await;
        state.next = (!interval.is_zero()).then(|| at + interval);
        if let Some((count, _, released)) = &mut state.window {
            if released.len() >= *count {
                released.pop_front();
            }
            released.push_back(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn unpaced_lets_everyone_through() {
        let pacer = Pacer::unpaced();
        let start = std::time::Instant::now();
        for _ in 0..10_000 {
            pacer.wait().await;
        }
        assert!(start.elapsed() < Duration::from_millis(50));
        assert_eq!(pacer.rate(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn spaces_at_the_full_rate_and_follows_a_new_rate() {
        let pacer = Pacer::unpaced();
        pacer.set_rate(Some(200.0)); // 5 ms apart
        let start = std::time::Instant::now();
        for _ in 0..101 {
            pacer.wait().await;
        }
        let first = start.elapsed();
        // 100 intervals of 5 ms; late wake-ups do not add up.
        assert!(first >= Duration::from_millis(499), "{first:?}");
        assert!(first < Duration::from_millis(515), "{first:?}");
        pacer.set_rate(Some(100.0)); // halved: 10 ms apart
        let start = std::time::Instant::now();
        for _ in 0..50 {
            pacer.wait().await;
        }
        let second = start.elapsed();
        assert!(second >= Duration::from_millis(485), "{second:?}");
        assert!(second < Duration::from_millis(520), "{second:?}");
        pacer.set_rate(None);
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            pacer.wait().await;
        }
        assert!(start.elapsed() < Duration::from_millis(20));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_strict_limit_never_exceeds_its_count_in_any_sliding_window() {
        // 10 per 200 ms (a minute's rule, scaled down): the first at once, the second a full
        // interval later (no burst: 61 went in the first minute of a 60/min limit before).
        let window = Duration::from_millis(200);
        let pacer = Pacer::per_window(10, window);
        let start = Instant::now();
        let mut released = Vec::new();
        for i in 0..35 {
            if i == 12 {
                // A waiter that comes late must not let the next ones bunch up behind it.
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            pacer.wait().await;
            released.push(Instant::now() - start);
        }
        assert!(released[0] < Duration::from_millis(2));
        assert!(
            released[1] >= Duration::from_millis(20),
            "{:?}",
            released[1]
        );
        for (i, run) in released.windows(11).enumerate() {
            assert!(
                run[10] - run[0] >= window,
                "window at {i}: {:?}",
                run[10] - run[0]
            );
        }
        assert!(
            released[34] < Duration::from_millis(740),
            "{:?}",
            released[34]
        );
    }
}
