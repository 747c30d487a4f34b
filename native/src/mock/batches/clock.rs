//! A batch's accelerated life, computed from the time elapsed since its creation on each look
//! (no background task): its phase, how many of its requests are done, and when each phase
//! began.

/// Where a batch stands. OpenAI shows every phase; Anthropic has no validating, finalizing or
/// failed phase (its `in_progress` starts at once and ends at the batch's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Validating,
    /// The input file failed validation (OpenAI), at the end of validating.
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Phase {
    /// Whether the batch is over: its results are final.
    pub(crate) fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Failed | Phase::Completed | Phase::Expired | Phase::Cancelled
        )
    }
}

/// A batch's timeline on the server's accelerated clock, in seconds since its creation.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    /// The whole life of a batch (`MockConfig::batch_seconds`).
    pub seconds: f64,
    /// When requests start being done (OpenAI: after validating, a tenth in).
    pub work_start: f64,
    /// When the last request is done (OpenAI: finalizing follows until `seconds`).
    pub work_end: f64,
    /// The batch's requests.
    pub total: usize,
    /// Expiring: the fraction of its requests done by its end; `None` for a batch that ends.
    pub expire_fraction: Option<f64>,
    /// The input failed validation: the batch fails when validating ends.
    pub invalid: bool,
    /// When a cancel was accepted, and how many requests were done then.
    pub cancelled: Option<(f64, usize)>,
}

impl Clock {
    /// An OpenAI batch: validating for a tenth, finalizing for the last twentieth.
    pub(crate) fn openai(seconds: f64, total: usize, expire_fraction: Option<f64>) -> Self {
        Clock {
            seconds,
            work_start: seconds / 10.0,
            work_end: if expire_fraction.is_some() {
                seconds
            } else {
                seconds * 0.95
            },
            total,
            expire_fraction,
            invalid: false,
            cancelled: None,
        }
    }

    /// An Anthropic batch: in progress from its creation to its end.
    pub(crate) fn anthropic(seconds: f64, total: usize, expire_fraction: Option<f64>) -> Self {
        Clock {
            seconds,
            work_start: 0.0,
            work_end: seconds,
            total,
            expire_fraction,
            invalid: false,
            cancelled: None,
        }
    }

    /// How long cancelling takes.
    pub(crate) fn cancel_seconds(&self) -> f64 {
        self.seconds / 10.0
    }

    /// Requests done by `t`, before any cancel: an even pace over the working window, up to
    /// all of them (an expiring batch: its fraction, rounded down).
    fn paced(&self, t: f64) -> usize {
        if self.invalid || t < self.work_start {
            return 0;
        }
        let target = match self.expire_fraction {
            Some(fraction) => (self.total as f64 * fraction).floor() as usize,
            None => self.total,
        };
        let span = self.work_end - self.work_start;
        let progress = if span > 0.0 {
            ((t - self.work_start) / span).clamp(0.0, 1.0)
        } else {
            1.0
        };
        ((target as f64 * progress).floor() as usize).min(target)
    }

    /// Requests done by `t`.
    pub(crate) fn done(&self, t: f64) -> usize {
        match self.cancelled {
            Some((_, done)) => done,
            None => self.paced(t),
        }
    }

    /// Accepts a cancel at `t`: the requests done by then are kept, the rest never run.
    pub(crate) fn cancel(&mut self, t: f64) {
        if self.cancelled.is_none() {
            self.cancelled = Some((t, self.paced(t)));
        }
    }

    pub(crate) fn phase(&self, t: f64) -> Phase {
        if self.invalid {
            return if t < self.work_start {
                Phase::Validating
            } else {
                Phase::Failed
            };
        }
        if let Some((at, _)) = self.cancelled {
            return if t < at + self.cancel_seconds() {
                Phase::Cancelling
            } else {
                Phase::Cancelled
            };
        }
        if t < self.work_start {
            Phase::Validating
        } else if t < self.work_end {
            Phase::InProgress
        } else if t < self.seconds {
            Phase::Finalizing
        } else if self.expire_fraction.is_some() {
            Phase::Expired
        } else {
            Phase::Completed
        }
    }

    /// When (seconds since creation) the batch entered `phase`, if it has by `t`.
    pub(crate) fn entered(&self, phase: Phase, t: f64) -> Option<f64> {
        let at = match phase {
            Phase::Validating => 0.0,
            Phase::Failed => self.work_start,
            Phase::InProgress if self.invalid => return None,
            Phase::InProgress => self.work_start,
            Phase::Finalizing | Phase::Completed | Phase::Expired => {
                let ended = match self.cancelled {
                    Some((at, _)) => at,
                    None => f64::INFINITY,
                };
                let at = match phase {
                    Phase::Finalizing if self.expire_fraction.is_some() => return None,
                    Phase::Finalizing => self.work_end,
                    Phase::Completed if self.expire_fraction.is_some() => return None,
                    Phase::Expired if self.expire_fraction.is_none() => return None,
                    _ => self.seconds,
                };
                if self.invalid || at >= ended {
                    return None;
                }
                at
            }
            Phase::Cancelling => self.cancelled?.0,
            Phase::Cancelled => self.cancelled?.0 + self.cancel_seconds(),
        };
        (at <= t).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openai_batch_validates_works_finalizes_and_completes() {
        let c = Clock::openai(10.0, 100, None);
        assert_eq!(c.phase(0.5), Phase::Validating);
        assert_eq!(c.done(0.5), 0);
        assert_eq!(c.phase(1.0), Phase::InProgress);
        assert_eq!(c.done(5.25), 50);
        assert_eq!(c.phase(9.6), Phase::Finalizing);
        assert_eq!(c.done(9.6), 100);
        assert_eq!(c.phase(10.0), Phase::Completed);
        assert!(c.phase(10.0).is_final());
        assert_eq!(c.entered(Phase::Completed, 11.0), Some(10.0));
        assert_eq!(c.entered(Phase::Completed, 9.0), None);
        assert_eq!(c.entered(Phase::Expired, 11.0), None);
    }

    #[test]
    fn an_anthropic_batch_expires_with_its_fraction_done() {
        let c = Clock::anthropic(2.0, 10, Some(0.5));
        assert_eq!(c.phase(0.0), Phase::InProgress);
        assert_eq!(c.done(1.0), 2);
        assert_eq!(c.phase(1.99), Phase::InProgress);
        assert_eq!(c.phase(2.0), Phase::Expired);
        assert_eq!(c.done(5.0), 5);
        assert_eq!(c.entered(Phase::Expired, 3.0), Some(2.0));
    }

    #[test]
    fn a_cancel_keeps_what_was_done() {
        let mut c = Clock::openai(10.0, 100, None);
        c.cancel(5.25);
        c.cancel(7.0);
        assert_eq!(c.phase(5.3), Phase::Cancelling);
        assert_eq!(c.phase(6.25), Phase::Cancelled);
        assert_eq!(c.done(100.0), 50);
        assert_eq!(c.entered(Phase::Cancelled, 7.0), Some(6.25));
        assert_eq!(c.entered(Phase::Completed, 100.0), None);
    }

    #[test]
    fn an_invalid_input_fails_after_validating() {
        let mut c = Clock::openai(10.0, 3, None);
        c.invalid = true;
        assert_eq!(c.phase(0.9), Phase::Validating);
        assert_eq!(c.phase(1.0), Phase::Failed);
        assert_eq!(c.done(9.0), 0);
        assert_eq!(c.entered(Phase::Failed, 2.0), Some(1.0));
        assert_eq!(c.entered(Phase::InProgress, 2.0), None);
    }
}
