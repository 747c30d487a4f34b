//! The mock server's configuration: what it checks, how slow it is, and which faults it injects.

use serde::Deserialize;
use std::io;

/// How a [`crate::mock::MockServer`] behaves. Every field has a default, so `{}` is a valid
/// config; unknown fields are rejected so that a typo in a test or a CLI flag is not ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// The only key accepted (`Authorization: Bearer` on OpenAI paths, `x-api-key` on Anthropic).
    pub api_key: String,
    /// Delay before the response headers of every API request.
    pub latency_ms: u64,
    /// Extra delay drawn uniformly from 0..=this per request, so that answers do not arrive in
    /// lockstep waves as no real API sends them.
    pub latency_jitter_ms: u64,
    /// Token bucket of capacity R refilled at R per second; a request finding it empty gets a 429.
    /// Enforced per second but stated per minute, as both providers do: the rate-limit headers
    /// say a limit of 60 × R requests per minute (see [`MockConfig::rate_limit_headers`]).
    pub rate_limit_rps: Option<u32>,
    /// The rate limit in force over time, as `[[start_seconds, rps], ...]` (JSON), starts
    /// strictly ascending and each rps at least 1. Time counts from the server's first API
    /// request, not from start-up, so that a benchmark's timing is reproducible. Before the first
    /// start `rate_limit_rps` applies (so a schedule not starting at 0 needs one); a schedule alone
    /// implies a rate limit. At a change the bucket's capacity and refill become the new R and
    /// its tokens are clamped to the new capacity: `[[0,40],[5,20],[15,40]]` is 40/s, then 20/s
    /// for ten seconds, then 40/s again.
    pub rate_limit_schedule: Vec<(f64, u32)>,
    /// Send the providers' rate-limit headers (OpenAI `x-ratelimit-*-requests`, Anthropic
    /// `anthropic-ratelimit-requests-*`) and, on a 429, `retry-after-ms` besides `retry-after`.
    /// Off, the mock is a gateway that states nothing: no rate-limit headers at all, and every
    /// 429 carries only `retry-after` (whole seconds, rounded up, at least 1).
    pub rate_limit_headers: bool,
    /// Overload episodes, as `[[start_seconds, duration_seconds], ...]` (JSON) on the clock of
    /// `rate_limit_schedule`: every API request arriving within `start..start + duration` is
    /// refused as an overloaded provider does (Anthropic 529 `overloaded_error`, OpenAI 503
    /// `server_error`), without `retry-after` and without spending a rate-limit token.
    pub overload: Vec<(f64, f64)>,
    /// Probability, per API request, of injecting one fault drawn uniformly from `faults`.
    pub fault_rate: f64,
    /// Fault kinds to draw from: "429", "500", "502", "503", "529", "reset", "cut".
    pub faults: Vec<String>,
    /// A last user message containing this text gets a permanent 400 (never a fault).
    pub bad_marker: String,
    /// Every request fails as an exhausted account would: OpenAI 429 `insufficient_quota`,
    /// Anthropic 400 "credit balance is too low".
    pub quota_exhausted: bool,
    /// Count requests per last-user-message text in [`crate::mock::MockStats::prompts`].
    pub track_prompts: bool,
    /// Seed of the fault RNG, so that a faulty run is reproducible.
    pub seed: u64,
    /// Answer `stream: true` requests with a whole JSON body (`application/json`), as some
    /// gateways do for some models (LiteLLM).
    pub stream_as_json: bool,
    /// The Batch APIs' accelerated time: how long, in seconds, a batch takes from its creation
    /// to its end. OpenAI: `validating` for its first tenth, then `in_progress` with its requests
    /// finishing at an even pace, `finalizing` for its last twentieth, then `completed`;
    /// Anthropic: `in_progress` (requests finishing evenly), then `ended`. A cancel takes a
    /// tenth of it (`cancelling`/`canceling`, then `cancelled`/`ended`).
    pub batch_seconds: f64,
    /// The first this many batches the server creates (both providers counted together)
    /// expire at their end with only `batch_expire_fraction` of their requests done.
    pub batch_expire_first: u32,
    /// The fraction of an expiring batch's requests done by its end (0..=1).
    pub batch_expire_fraction: f64,
    /// For crash tests: a batch create and a file upload wait this long, then do their work,
    /// then wait this long again before answering; a results or file-content download waits
    /// this long before answering.
    pub batch_delay_ms: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            api_key: "mock-key".to_string(),
            latency_ms: 0,
            latency_jitter_ms: 0,
            rate_limit_rps: None,
            rate_limit_schedule: Vec::new(),
            rate_limit_headers: true,
            overload: Vec::new(),
            fault_rate: 0.0,
            faults: FaultKind::ALL
                .iter()
                .map(|k| k.name().to_string())
                .collect(),
            bad_marker: "[[bad]]".to_string(),
            quota_exhausted: false,
            track_prompts: false,
            seed: 0,
            stream_as_json: false,
            batch_seconds: 2.0,
            batch_expire_first: 0,
            batch_expire_fraction: 0.5,
            batch_delay_ms: 0,
        }
    }
}

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A 429 rate-limit error with a short `retry-after-ms`.
    TooManyRequests,
    /// A 500 provider error.
    Internal,
    /// A 502 provider error.
    BadGateway,
    /// A 503 provider error.
    Unavailable,
    /// A 529 overloaded error.
    Overloaded,
    /// The connection is closed without any response.
    Reset,
    /// The response starts, then the connection is closed before its end.
    Cut,
}

impl FaultKind {
    /// Every kind, the default of [`MockConfig::faults`].
    pub const ALL: [FaultKind; 7] = [
        FaultKind::TooManyRequests,
        FaultKind::Internal,
        FaultKind::BadGateway,
        FaultKind::Unavailable,
        FaultKind::Overloaded,
        FaultKind::Reset,
        FaultKind::Cut,
    ];

    /// The name used in [`MockConfig::faults`] and as the key in `MockStats::by_status`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::TooManyRequests => "429",
            FaultKind::Internal => "500",
            FaultKind::BadGateway => "502",
            FaultKind::Unavailable => "503",
            FaultKind::Overloaded => "529",
            FaultKind::Reset => "reset",
            FaultKind::Cut => "cut",
        }
    }

    /// Parses a name from [`MockConfig::faults`].
    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl MockConfig {
    /// Checks the values serde cannot, and resolves the fault names.
    pub(crate) fn validate(&self) -> io::Result<Vec<FaultKind>> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if !(0.0..=1.0).contains(&self.fault_rate) {
            return Err(invalid(format!(
                "mock fault_rate must be within 0..=1, got {}",
                self.fault_rate
            )));
        }
        if self.rate_limit_rps == Some(0) {
            return Err(invalid("mock rate_limit_rps must be at least 1".into()));
        }
        self.validate_schedule().map_err(invalid)?;
        if !(self.batch_seconds.is_finite() && self.batch_seconds > 0.0) {
            return Err(invalid(format!(
                "mock batch_seconds must be more than 0, got {}",
                self.batch_seconds
            )));
        }
        if !(0.0..=1.0).contains(&self.batch_expire_fraction) {
            return Err(invalid(format!(
                "mock batch_expire_fraction must be within 0..=1, got {}",
                self.batch_expire_fraction
            )));
        }
        for &(start, duration) in &self.overload {
            if !(start.is_finite() && start >= 0.0 && duration.is_finite() && duration > 0.0) {
                return Err(invalid(format!(
                    "mock overload episode [{start}, {duration}]: the start must be 0 or more \
                     seconds and the duration more than 0 seconds"
                )));
            }
        }
        let kinds = self
            .faults
            .iter()
            .map(|name| {
                FaultKind::parse(name).ok_or_else(|| {
                    invalid(format!(
                        "unknown mock fault kind {name:?}; expected one of 429, 500, 502, 503, 529, reset, cut"
                    ))
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        if self.fault_rate > 0.0 && kinds.is_empty() {
            return Err(invalid(
                "mock fault_rate > 0 needs at least one fault kind".into(),
            ));
        }
        Ok(kinds)
    }

    /// Schedule starts finite, 0 or more and strictly ascending, rates at least 1, and a rate
    /// for the time before the first start.
    fn validate_schedule(&self) -> Result<(), String> {
        let mut previous: Option<f64> = None;
        for &(start, rps) in &self.rate_limit_schedule {
            if !(start.is_finite() && start >= 0.0) {
                return Err(format!(
                    "mock rate_limit_schedule start {start} must be 0 or more seconds"
                ));
            }
            if previous.is_some_and(|p| start <= p) {
                return Err(format!(
                    "mock rate_limit_schedule starts must be strictly ascending; {start} follows {}",
                    previous.unwrap_or_default()
                ));
            }
            if rps == 0 {
                return Err(format!(
                    "mock rate_limit_schedule rps must be at least 1, got 0 at {start} s"
                ));
            }
            previous = Some(start);
        }
        match self.rate_limit_schedule.first() {
            Some(&(start, _)) if start > 0.0 && self.rate_limit_rps.is_none() => Err(format!(
                "mock rate_limit_schedule starts at {start} s, not 0: give rate_limit_rps for \
                 the time before it, or start the schedule at 0"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c: MockConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.api_key, "mock-key");
        assert_eq!(c.bad_marker, "[[bad]]");
        assert_eq!(c.validate().unwrap().len(), 7);
        assert!(serde_json::from_str::<MockConfig>(r#"{"latency":1}"#).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        let c = MockConfig {
            faults: vec!["418".into()],
            ..MockConfig::default()
        };
        assert!(c.validate().is_err());
        let c = MockConfig {
            fault_rate: 1.5,
            ..MockConfig::default()
        };
        assert!(c.validate().is_err());
        for (seconds, fraction) in [(0.0, 0.5), (f64::NAN, 0.5), (1.0, 1.5), (1.0, -0.1)] {
            let c = MockConfig {
                batch_seconds: seconds,
                batch_expire_fraction: fraction,
                ..MockConfig::default()
            };
            assert!(c.validate().is_err(), "{seconds} {fraction}");
        }
        let bad_schedules: [&[(f64, u32)]; 4] = [
            &[(0.0, 40), (5.0, 0)],
            &[(0.0, 40), (5.0, 20), (5.0, 30)],
            &[(-1.0, 40)],
            &[(2.0, 40)],
        ];
        for schedule in bad_schedules {
            let c = MockConfig {
                rate_limit_schedule: schedule.to_vec(),
                ..MockConfig::default()
            };
            assert!(c.validate().is_err(), "{schedule:?}");
        }
        for overload in [(-1.0, 2.0), (1.0, 0.0), (1.0, f64::INFINITY)] {
            let c = MockConfig {
                overload: vec![overload],
                ..MockConfig::default()
            };
            assert!(c.validate().is_err(), "{overload:?}");
        }
    }

    #[test]
    fn schedule_and_overload_from_json() {
        let c: MockConfig = serde_json::from_str(
            r#"{"rate_limit_schedule": [[0, 40], [5, 20], [15.5, 40]],
                "overload": [[10, 5], [40, 0.5]], "rate_limit_headers": false}"#,
        )
        .unwrap();
        assert_eq!(c.rate_limit_schedule, [(0.0, 40), (5.0, 20), (15.5, 40)]);
        assert_eq!(c.overload, [(10.0, 5.0), (40.0, 0.5)]);
        assert!(!c.rate_limit_headers);
        assert!(c.validate().is_ok());
        // A schedule starting later is fine with a base rate for the time before it.
        let c = MockConfig {
            rate_limit_rps: Some(10),
            rate_limit_schedule: vec![(2.0, 40)],
            ..MockConfig::default()
        };
        assert!(c.validate().is_ok());
        assert!(MockConfig::default().rate_limit_headers);
    }
}
