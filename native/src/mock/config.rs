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
    pub rate_limit_rps: Option<u32>,
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
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            api_key: "mock-key".to_string(),
            latency_ms: 0,
            latency_jitter_ms: 0,
            rate_limit_rps: None,
            fault_rate: 0.0,
            faults: FaultKind::ALL
                .iter()
                .map(|k| k.name().to_string())
                .collect(),
            bad_marker: "[[bad]]".to_string(),
            quota_exhausted: false,
            track_prompts: false,
            seed: 0,
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
    }
}
