//! Retries: the one loop that sends a request until it settles ([`until_settled`], used by the
//! executor and the model client, each through its own [`Hooks`]), and backoff with jitter
//! (ARCHITECTURE.md "Retries"). Why an attempt failed, and whether that is retryable, is
//! [`crate::error::ErrorType`]; how an HTTP answer maps to it is `provider::classify_status`.

use crate::transport::{AttemptError, Success};
use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;

/// What a caller of [`until_settled`] adds to the loop: waiting for a turn, sending, watching
/// each answer, judging a failure, and waiting before a retry.
pub(crate) trait Hooks {
    /// Waits until the next attempt may be sent (the executor's pacing); `false` gives the
    /// request up.
    async fn turn(&mut self) -> bool {
        true
    }

    /// Sends attempt number `attempt` (from 1); `None` gives the request up (cancelled).
    async fn send(&mut self, attempt: u32) -> Option<Result<Success, AttemptError>>;

    /// Sees every attempt's answer: when it was sent and how long it took.
    fn answered(
        &mut self,
        attempt: u32,
        sent: Instant,
        latency: Duration,
        outcome: &Result<Success, AttemptError>,
    ) {
        let _ = (attempt, sent, latency, outcome);
    }

    /// Judges a failed attempt before the usual rule applies (see [`Verdict`]).
    fn failed(&mut self, err: &AttemptError) -> Verdict;

    /// Waits `delay` before retrying after `err`; `false` gives the request up.
    async fn pause(&mut self, err: &AttemptError, delay: Duration) -> bool {
        let _ = err;
        tokio::time::sleep(delay).await;
        true
    }
}

/// What a caller makes of a failed attempt.
pub(crate) enum Verdict {
    /// The usual rule: retry a retryable failure while retries are left. `counts`: this failure
    /// uses one up; `step`: the backoff step, instead of the number of retries used before it.
    Usual { counts: bool, step: Option<u32> },
    /// Settle on this failure, retryable or not (a stream already handed out text).
    Final,
    /// Give the request up without a result (the run was stopped).
    Abandon,
}

/// A request's last answer, after all its attempts.
pub(crate) struct Settled {
    /// Attempts sent, retries included.
    pub attempts: u32,
    /// The last attempt's duration.
    pub latency: Duration,
    pub result: Result<Success, AttemptError>,
}

/// Sends until success, a failure that is not retried, or `max_retries` counted failures;
/// waits [`Backoff::delay`] between attempts. `None` when a hook gave the request up.
pub(crate) async fn until_settled(
    backoff: &Backoff,
    max_retries: u32,
    hooks: &mut impl Hooks,
) -> Option<Settled> {
    let mut attempt: u32 = 0;
    // Failures that used up a retry.
    let mut counted: u32 = 0;
    loop {
        if !hooks.turn().await {
            return None;
        }
        attempt += 1;
        let sent = Instant::now();
        let outcome = hooks.send(attempt).await?;
        let latency = sent.elapsed();
        hooks.answered(attempt, sent, latency, &outcome);
        let settled = |result| {
            Some(Settled {
                attempts: attempt,
                latency,
                result,
            })
        };
        let err = match outcome {
            Ok(success) => return settled(Ok(success)),
            Err(err) => err,
        };
        let step = match hooks.failed(&err) {
            Verdict::Abandon => return None,
            Verdict::Final => return settled(Err(err)),
            Verdict::Usual { counts, step } => {
                counted += u32::from(counts);
                step.unwrap_or(counted.saturating_sub(1))
            }
        };
        if !err.kind.is_retryable() || counted > max_retries {
            return settled(Err(err));
        }
        let delay = backoff.delay(step, err.retry_after, &mut rand::rng());
        tracing::info!(
            attempt,
            status = err.http_status,
            cause = err.kind.as_str(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        if !hooks.pause(&err, delay).await {
            return None;
        }
    }
}

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

    /// Hooks answering from a script: `Some(status)` fails with that status, `None` succeeds.
    struct Script {
        answers: Vec<Option<u16>>,
        verdict: fn(&AttemptError) -> Verdict,
        sent: u32,
        pauses: u32,
    }

    impl Hooks for Script {
        async fn send(&mut self, attempt: u32) -> Option<Result<Success, AttemptError>> {
            self.sent += 1;
            assert_eq!(attempt, self.sent);
            let status = *self.answers.get(attempt as usize - 1)?;
            Some(match status {
                None => Ok(Success {
                    completion: Default::default(),
                    http_status: 200,
                    ttft: None,
                    limits: None,
                }),
                Some(status) => Err(AttemptError {
                    kind: crate::provider::classify_status(
                        crate::provider::ProviderKind::OpenAi,
                        status,
                        b"",
                    ),
                    http_status: Some(status),
                    message: String::new(),
                    retry_after: None,
                    limits: None,
                }),
            })
        }

        fn failed(&mut self, err: &AttemptError) -> Verdict {
            (self.verdict)(err)
        }

        async fn pause(&mut self, _err: &AttemptError, _delay: Duration) -> bool {
            self.pauses += 1;
            true
        }
    }

    fn usual(_: &AttemptError) -> Verdict {
        Verdict::Usual {
            counts: true,
            step: None,
        }
    }

    /// (attempts, final status) of a scripted request; `None` when it was given up.
    fn drive(
        answers: &[Option<u16>],
        max_retries: u32,
        verdict: fn(&AttemptError) -> Verdict,
    ) -> Option<(u32, u16)> {
        let mut script = Script {
            answers: answers.to_vec(),
            verdict,
            sent: 0,
            pauses: 0,
        };
        let backoff = Backoff {
            base: Duration::ZERO,
            cap: Duration::ZERO,
        };
        let settled = crate::runtime::runtime().block_on(until_settled(
            &backoff,
            max_retries,
            &mut script,
        ))?;
        assert_eq!(script.pauses + 1, settled.attempts);
        let status = match settled.result {
            Ok(ok) => ok.http_status,
            Err(err) => err.http_status.unwrap_or_default(),
        };
        Some((settled.attempts, status))
    }

    #[test]
    fn the_loop_retries_what_is_retryable_while_retries_are_left() {
        let (ok, e500, e400, e429) = (None, Some(500), Some(400), Some(429));
        assert_eq!(drive(&[e500, e500, ok], 2, usual), Some((3, 200)));
        assert_eq!(drive(&[e500, e500, ok], 1, usual), Some((2, 500)));
        assert_eq!(drive(&[e400, ok], 5, usual), Some((1, 400)));
        // Failures that do not count (the executor's rate-limit patience) use no retry.
        let free = |err: &AttemptError| Verdict::Usual {
            counts: err.http_status != Some(429),
            step: Some(0),
        };
        assert_eq!(drive(&[e429, e429, e429, ok], 0, free), Some((4, 200)));
        assert_eq!(drive(&[e429, e500, ok], 0, free), Some((2, 500)));
        // A final failure settles at once; a request given up has no result.
        assert_eq!(drive(&[e500, ok], 3, |_| Verdict::Final), Some((1, 500)));
        assert_eq!(drive(&[e500, ok], 3, |_| Verdict::Abandon), None);
        assert_eq!(drive(&[e500], 3, usual), None); // `send` gave up (cancelled)
    }

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
