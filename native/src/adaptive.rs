//! The pace for a rate limit the server does not state: learned from the share of 429s among
//! recent responses, cut when slowing down helps, given back when it does not.
//!
//! A limit shows as a share of 429s that falls when the run slows down (the server accepts about
//! R a second whatever is sent); passing faults show as a share that stays where it was. So a
//! share above the learned floor cuts the pace to what the server accepted, and the cut is put
//! to the test: if the share has not fallen after [`TEST_FOR`], the 429s were not about the rate,
//! the old pace comes back and the share becomes the floor. Below the floor the pace creeps up
//! again, so a limit that rises is followed too.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Responses are counted in buckets of this length.
const TICK: Duration = Duration::from_millis(250);
/// Buckets kept: ten seconds of history.
const BUCKETS: usize = 40;
/// A decision needs at least this much history ...
const MIN_SPAN: Duration = Duration::from_secs(1);
/// ... and this many responses in it.
const MIN_RESPONSES: u64 = 40;
/// A share of 429s this far above the floor (beyond two standard errors of it) means the run
/// is at a limit ...
const TRIGGER: f64 = 0.03;
/// ... when at least this many of them are 429s.
const MIN_LIMITED: u64 = 4;
/// How long a cut runs before it is judged.
const TEST_FOR: Duration = Duration::from_secs(2);
/// The pace after a cut, as a share of the rate the server accepted.
const CUT_TO: f64 = 0.95;
/// Growth of the pace per tick while the share stays at the floor (~8 % a second) ...
const PROBE_STEP: f64 = 0.02;
/// ... and at first only this much once past the rate the server accepted at the last cut: a
/// server's burst allowance hides an overshoot for seconds, so the probe above the known limit
/// starts slow (~1 % a second) and doubles every [`PROBE_DOUBLING_TICKS`] (8 s) without a 429:
/// an unstated limit that rises is found again within about half a minute.
const PROBE_STEP_ABOVE: f64 = 0.0025;
const PROBE_DOUBLING_TICKS: f64 = 32.0;
/// Passing faults are never taken to be more than this share of answers: a share above it that
/// a cut did not lower means the cut was not deep enough, and the pace is halved.
const FLOOR_MAX: f64 = 0.2;
/// A share of 429s this far above the floor (beyond two standard errors) over the history since
/// the last change trims the pace to [`TRIM_TO`] of what the server accepted.
const TRIM_MARGIN: f64 = 0.005;
const TRIM_TO: f64 = 0.98;
/// The slowest pace a cut sets.
const MIN_RATE: f64 = 0.05;

#[derive(Clone, Copy, Default)]
struct Bucket {
    responses: u64,
    limited: u64,
}

struct Test {
    until: Instant,
    share_before: f64,
    responses_before: u64,
    /// The rate the server accepted before the cut.
    accepted: f64,
    previous: Option<f64>,
}

/// The controller; its owner applies the pace it returns to a [`crate::pacer::Pacer`].
pub struct AdaptiveRate {
    /// Closed buckets with their start times, oldest first.
    history: VecDeque<(Instant, Bucket)>,
    current: Bucket,
    current_start: Instant,
    rate: Option<f64>,
    floor: f64,
    test: Option<Test>,
    /// The rate the server accepted when a cut last proved a limit, and probe ticks spent
    /// at or above it since.
    ceiling: Option<f64>,
    ticks_above: u32,
}

impl AdaptiveRate {
    pub fn new(now: Instant) -> Self {
        Self {
            history: VecDeque::with_capacity(BUCKETS),
            current: Bucket::default(),
            current_start: now,
            rate: None,
            floor: 0.0,
            test: None,
            ceiling: None,
            ticks_above: 0,
        }
    }

    /// The pace in requests per second; `None` while no limit has been found.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The share of 429s taken for passing faults.
    pub fn floor(&self) -> f64 {
        self.floor
    }

    /// Counts `responses` answers, `limited` of them 429s. Returns the new pace when it changed.
    pub fn record(&mut self, responses: u64, limited: u64, now: Instant) -> Option<Option<f64>> {
        self.current.responses += responses;
        self.current.limited += limited;
        if now.saturating_duration_since(self.current_start) < TICK {
            return None;
        }
        if self.history.len() == BUCKETS {
            self.history.pop_front();
        }
        self.history.push_back((self.current_start, self.current));
        self.current = Bucket::default();
        self.current_start = now;
        let before = self.rate;
        self.decide(now);
        (self.rate != before).then_some(self.rate)
    }

    /// Responses, 429s and seconds of all the history kept (since the last change of pace).
    fn whole(&self, now: Instant) -> Option<(u64, u64, f64)> {
        let (start, _) = self.history.front()?;
        let (responses, limited) = self
            .history
            .iter()
            .fold((0, 0), |(r, l), (_, b)| (r + b.responses, l + b.limited));
        let secs = now.saturating_duration_since(*start).as_secs_f64();
        (secs > 0.0 && responses > 0).then_some((responses, limited, secs))
    }

    /// Responses, 429s and the rate the server accepted, over the most recent history that is
    /// enough to judge by. The accepted rate is the median of its ticks': a server's burst
    /// allowance, spent at the start, would inflate a plain average.
    fn recent(&self, now: Instant) -> Option<(u64, u64, f64)> {
        let mut sum = Bucket::default();
        let mut accepted = Vec::new();
        let mut end = now;
        for (start, bucket) in self.history.iter().rev() {
            sum.responses += bucket.responses;
            sum.limited += bucket.limited;
            let tick = end
                .saturating_duration_since(*start)
                .as_secs_f64()
                .max(1e-3);
            accepted.push((bucket.responses - bucket.limited) as f64 / tick);
            end = *start;
            let span = now.saturating_duration_since(*start);
            if span >= MIN_SPAN && sum.responses >= MIN_RESPONSES {
                accepted.sort_by(f64::total_cmp);
                let median = accepted[accepted.len() / 2];
                return Some((sum.responses, sum.limited, median));
            }
        }
        None
    }

    fn decide(&mut self, now: Instant) {
        let Some((responses, limited, accepted_now)) = self.recent(now) else {
            return;
        };
        let share = limited as f64 / responses as f64;
        if let Some(test) = &self.test {
            if now < test.until {
                return;
            }
            // Did the share fall by more than chance would explain (two standard errors)?
            let (n1, n2) = (test.responses_before as f64, responses as f64);
            let pooled = ((test.share_before * n1 + share * n2) / (n1 + n2)).clamp(0.01, 0.99);
            let error = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
            let fell = test.share_before - share > 2.0 * error || share <= self.floor + TRIGGER;
            let Test {
                previous, accepted, ..
            } = self.test.take().expect("checked above");
            if !fell && share <= FLOOR_MAX {
                // Slowing down changed nothing: these 429s are passing faults.
                self.floor = share;
                self.rate = previous;
                self.history.clear();
                return;
            }
            if !fell {
                // Most answers are 429s and the cut did not help: not deep enough.
                let halved = (self.rate.unwrap_or(accepted) * 0.5).max(MIN_RATE);
                self.rate = Some(halved);
                self.test = Some(Test {
                    until: now + TEST_FOR,
                    share_before: share,
                    responses_before: responses,
                    accepted,
                    previous,
                });
                self.history.clear();
                return;
            }
            self.ceiling = Some(accepted);
        }
        let p = self.floor.max(0.02);
        let noise = 2.0 * (p * (1.0 - p) / responses as f64).sqrt();
        if limited >= MIN_LIMITED && share > self.floor + TRIGGER + noise {
            let accepted = accepted_now;
            let mut target = (accepted * CUT_TO).max(MIN_RATE);
            if let Some(rate) = self.rate {
                target = target.min(rate * 0.9);
            }
            if let Some(ceiling) = self.ceiling {
                // Probing above a proven limit found it again: back below it, deep enough for
                // the test to tell (the accepted rate still counts the server's burst).
                target = target.min(ceiling * CUT_TO);
            }
            self.test = Some(Test {
                until: now + TEST_FOR,
                share_before: share,
                responses_before: responses,
                accepted,
                previous: self.rate,
            });
            self.rate = Some(target);
            self.ticks_above = 0;
            // Judge the new pace by what comes after it only.
            self.history.clear();
        } else if let (Some(rate), Some((all, all_limited, secs))) = (self.rate, self.whole(now)) {
            // Paced at a proven limit, a few 429s that do not go away say the pace is a little
            // above it: trim it to what the server accepts, without a test.
            let all_share = all_limited as f64 / all as f64;
            let p = self.floor.max(0.01);
            let error = (p * (1.0 - p) / all as f64).sqrt();
            let over = self.ceiling.is_some()
                && all_limited >= MIN_LIMITED
                && all_share - self.floor > 2.0 * error + TRIM_MARGIN;
            if over {
                let accepted = (all - all_limited) as f64 / secs;
                self.rate = Some(rate.min(accepted) * TRIM_TO);
                self.ticks_above = 0;
                self.history.clear();
            } else if share <= self.floor + TRIGGER / 3.0 {
                // Nothing beyond the floor lately: probe upward.
                let step = match self.ceiling {
                    Some(ceiling) if rate >= ceiling => {
                        self.ticks_above += 1;
                        let doublings = f64::from(self.ticks_above) / PROBE_DOUBLING_TICKS;
                        (PROBE_STEP_ABOVE * doublings.exp2()).min(PROBE_STEP)
                    }
                    _ => PROBE_STEP,
                };
                self.rate = Some(rate * (1.0 + step));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// How the simulated server answers one request at a time `t` (seconds).
    enum Server {
        /// A token bucket of capacity R refilled at R a second, as the mock (and the providers)
        /// enforce; the limit R may change over time.
        Bucket {
            limit: fn(f64) -> f64,
            tokens: f64,
            last: f64,
        },
        /// A fixed share of 429s whatever the rate.
        Faults(f64),
    }

    impl Server {
        fn bucket(limit: fn(f64) -> f64) -> Self {
            Server::Bucket {
                limit,
                tokens: limit(0.0),
                last: 0.0,
            }
        }

        fn answer(&mut self, t: f64, rng: &mut StdRng) -> bool {
            match self {
                Server::Faults(p) => rng.random::<f64>() < *p,
                Server::Bucket {
                    limit,
                    tokens,
                    last,
                } => {
                    let r = limit(t);
                    *tokens = (*tokens + (t - *last) * r).min(r);
                    *last = t;
                    if *tokens >= 1.0 {
                        *tokens -= 1.0;
                        false
                    } else {
                        true
                    }
                }
            }
        }
    }

    /// A run sending as fast as allowed (200 a second unpaced), evenly at the pace when paced.
    /// Returns (requests, 429s) per second.
    fn simulate(server: &mut Server, seconds: f64, seed: u64) -> Vec<(u32, u32)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut ctl = AdaptiveRate::new(start);
        let mut per_second = vec![(0, 0); seconds as usize + 1];
        let mut t = 0.0;
        while t < seconds {
            let rate = ctl.rate().unwrap_or(200.0);
            t += 1.0 / rate;
            let limited = server.answer(t, &mut rng);
            ctl.record(1, u64::from(limited), start + Duration::from_secs_f64(t));
            let slot = &mut per_second[t as usize];
            slot.0 += 1;
            slot.1 += u32::from(limited);
        }
        per_second
    }

    /// Accepted requests a second and the share of 429s over seconds `from..to`.
    fn over(per_second: &[(u32, u32)], from: usize, to: usize) -> (f64, f64) {
        let (sent, limited) = per_second[from..to]
            .iter()
            .fold((0, 0), |(s, l), (a, b)| (s + a, l + b));
        let accepted = f64::from(sent - limited) / (to - from) as f64;
        (accepted, f64::from(limited) / f64::from(sent))
    }

    #[test]
    fn a_limit_is_found_and_followed_closely() {
        for seed in 0..5 {
            let mut server = Server::bucket(|_| 40.0);
            let seconds = simulate(&mut server, 60.0, seed);
            // The first second is sent unpaced (a real run: its concurrency at once) and
            // learns the limit from its 429s; from then on the run stays at the limit.
            let (accepted, share) = over(&seconds, 1, 60);
            assert!(accepted >= 0.9 * 40.0, "seed {seed}: {accepted}/s");
            assert!(share <= 0.05, "seed {seed}: {share}");
        }
    }

    #[test]
    fn scattered_429s_that_do_not_follow_the_rate_leave_the_run_unpaced() {
        for seed in 0..5 {
            let seconds = simulate(&mut Server::Faults(0.06), 30.0, seed);
            // Sent at (nearly) the unpaced rate all along: a cut is tried, then given back.
            let (accepted, _) = over(&seconds, 0, 30);
            assert!(accepted >= 0.9 * 200.0 * 0.94, "seed {seed}: {accepted}/s");
        }
    }

    #[test]
    fn a_limit_that_halves_and_comes_back_is_followed_both_ways() {
        for seed in 0..5 {
            let mut server = Server::bucket(|t| {
                if (20.0..40.0).contains(&t) {
                    20.0
                } else {
                    40.0
                }
            });
            let seconds = simulate(&mut server, 90.0, seed);
            let (low, share) = over(&seconds, 23, 40);
            assert!((17.0..=21.0).contains(&low), "seed {seed}: {low}/s");
            assert!(share <= 0.1, "seed {seed}: {share}");
            // Back up: a rising limit is probed for more slowly than a falling one is left.
            let (high, _) = over(&seconds, 70, 90);
            assert!(high >= 0.85 * 40.0, "seed {seed}: {high}/s");
        }
    }
}
