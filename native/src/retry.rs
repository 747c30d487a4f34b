//! Retry policy: backoff with jitter. (Why an attempt failed, and whether that is retryable, is
//! [`crate::error::ErrorType`]; how an HTTP answer maps to it is `provider::classify_status`.)

use rand::Rng;
use std::time::Duration;

/// Exponential backoff with full jitter, floored by the server's hint when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The window for the first retry (attempt 0).
    pub base: Duration,
    /// The largest window without a server hint.
    pub cap: Duration,
}

impl Backoff {
    /// The longest we ever wait, even when a server asks for more: a run should keep moving,
    /// and the next attempt will get a fresh hint if the limit still holds.
    pub const MAX_DELAY: Duration = Duration::from_secs(60);

    /// How long to wait before retry number `attempt` (0-based).
    ///
    /// Without a hint: uniform in `[0, min(cap, base * 2^attempt)]` ("full jitter"), so that
    /// many rows failing together do not come back together. With a hint (Retry-After, reset
    /// headers): at least the hint plus up to 10 % (min 50 ms) of spread, and never less than
    /// the jittered backoff, so a server answering "retry after 0" still gets backoff.
    /// Always at most [`Backoff::MAX_DELAY`].
    pub fn delay(
        &self,
        attempt: u32,
        server_hint: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32 << attempt.min(30))
            .min(self.cap);
        let jittered = random_up_to(window, rng);
        let delay = match server_hint {
            None => jittered,
            Some(hint) => {
                let hint = hint.min(Self::MAX_DELAY);
                let spread = (hint / 10).max(Duration::from_millis(50));
                (hint + random_up_to(spread, rng)).max(jittered)
            }
        };
        delay.min(Self::MAX_DELAY)
    }
}

impl Default for Backoff {
    /// 0.5 s doubling up to 30 s: six retries span about a minute at worst.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

fn random_up_to(max: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn full_jitter_stays_in_window() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let mut rng = StdRng::seed_from_u64(7);
        let cases: &[(u32, Duration)] = &[
            (0, Duration::from_millis(100)),
            (1, Duration::from_millis(200)),
            (3, Duration::from_millis(800)),
            (5, Duration::from_secs(2)),
            (40, Duration::from_secs(2)),
            (u32::MAX, Duration::from_secs(2)),
        ];
        for &(attempt, window) in cases {
            let samples: Vec<_> = (0..500)
                .map(|_| backoff.delay(attempt, None, &mut rng))
                .collect();
            assert!(samples.iter().all(|d| *d <= window), "attempt {attempt}");
            // Full jitter: values spread over the whole window, not clustered at its top.
            assert!(samples.iter().any(|d| *d < window / 4), "attempt {attempt}");
            assert!(
                samples.iter().any(|d| *d > window * 3 / 4),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn server_hint_is_a_floor_with_small_jitter_and_capped() {
        let backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(11);
        let cases: &[(Duration, Duration, Duration)] = &[
            // hint, lowest allowed, highest allowed
            (
                Duration::from_secs(5),
                Duration::from_secs(5),
                Duration::from_millis(5500),
            ),
            (Duration::ZERO, Duration::ZERO, Duration::from_millis(500)),
            (
                Duration::from_millis(20),
                Duration::from_millis(20),
                Duration::from_millis(500),
            ),
            (
                Duration::from_secs(600),
                Backoff::MAX_DELAY,
                Backoff::MAX_DELAY,
            ),
        ];
        for &(hint, low, high) in cases {
            for _ in 0..300 {
                let d = backoff.delay(0, Some(hint), &mut rng);
                assert!(d >= low && d <= high, "hint {hint:?} gave {d:?}");
            }
        }
        // A late attempt's backoff still applies when the hint is shorter.
        let late = (0..300)
            .map(|_| backoff.delay(8, Some(Duration::from_millis(10)), &mut rng))
            .max()
            .unwrap_or_default();
        assert!(late > Duration::from_secs(5));
    }
}
