//! Retry policy: classifying a failed attempt, deciding whether to retry, and backoff with jitter.

use crate::provider::{self, ProviderKind};
use rand::Rng;
use std::fmt;
use std::time::Duration;

/// Why one attempt failed. Written to the output's `error_type` column via [`ErrorType::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// 429 without a quota message: too many requests or tokens for now.
    RateLimited,
    /// 500/502/503/504 or any other 5xx, or a provider `api_error` mid-stream.
    ServerError,
    /// 529 or Anthropic's `overloaded_error`: the provider is shedding load.
    Overloaded,
    /// 408, or no complete response within the attempt's timeout.
    Timeout,
    /// The connection could not be made, was reset, or the body could not be read.
    Connection,
    /// Any 4xx not listed elsewhere: the request itself is wrong; retrying cannot help.
    BadRequest,
    /// 404: wrong base URL or model name.
    NotFound,
    /// 401/403: the key is missing, wrong or lacks permission. Stops the run.
    Auth,
    /// The account is out of credit (`insufficient_quota`, `billing_error`). Stops the run.
    Quota,
    /// A 2xx whose body is not the JSON (or event stream) the provider documents.
    InvalidResponse,
    /// A stream that ended or was cut before its final event; never recorded as ok.
    IncompleteStream,
    /// 409: a conflicting concurrent request; the providers ask to retry.
    Conflict,
    /// The run was stopped before this request finished.
    Cancelled,
}

impl ErrorType {
    /// Every variant, for tests and for code that builds per-type counters.
    pub const ALL: [ErrorType; 13] = [
        ErrorType::RateLimited,
        ErrorType::ServerError,
        ErrorType::Overloaded,
        ErrorType::Timeout,
        ErrorType::Connection,
        ErrorType::BadRequest,
        ErrorType::NotFound,
        ErrorType::Auth,
        ErrorType::Quota,
        ErrorType::InvalidResponse,
        ErrorType::IncompleteStream,
        ErrorType::Conflict,
        ErrorType::Cancelled,
    ];

    /// The snake_case name used in the output schema and in `status` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::RateLimited => "rate_limited",
            ErrorType::ServerError => "server_error",
            ErrorType::Overloaded => "overloaded",
            ErrorType::Timeout => "timeout",
            ErrorType::Connection => "connection",
            ErrorType::BadRequest => "bad_request",
            ErrorType::NotFound => "not_found",
            ErrorType::Auth => "auth",
            ErrorType::Quota => "quota",
            ErrorType::InvalidResponse => "invalid_response",
            ErrorType::IncompleteStream => "incomplete_stream",
            ErrorType::Conflict => "conflict",
            ErrorType::Cancelled => "cancelled",
        }
    }

    /// Whether another attempt may succeed (DESIGN.md "Executor rules").
    ///
    /// A 2xx with an unparseable body is not retried: the same request gets the same answer,
    /// and DESIGN.md lists the retryable cases exhaustively.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorType::RateLimited
                | ErrorType::ServerError
                | ErrorType::Overloaded
                | ErrorType::Timeout
                | ErrorType::Connection
                | ErrorType::IncompleteStream
                | ErrorType::Conflict
        )
    }

    /// Whether the whole run must stop: every other row would fail the same way.
    pub fn is_fatal(self) -> bool {
        matches!(self, ErrorType::Auth | ErrorType::Quota)
    }

    /// The type a provider's error name stands for (`overloaded_error`, `rate_limit_exceeded`,
    /// `insufficient_quota`, ...), as sent in error bodies and mid-stream error events.
    pub fn from_provider_name(name: &str) -> Option<ErrorType> {
        Some(match name {
            "overloaded_error" => ErrorType::Overloaded,
            "rate_limit_error" | "rate_limit_exceeded" | "requests" | "tokens" => {
                ErrorType::RateLimited
            }
            "api_error" | "server_error" | "internal_server_error" | "service_unavailable" => {
                ErrorType::ServerError
            }
            "timeout_error" | "timeout" => ErrorType::Timeout,
            "authentication_error" | "permission_error" | "invalid_api_key" => ErrorType::Auth,
            "insufficient_quota" | "billing_error" => ErrorType::Quota,
            "not_found_error" | "model_not_found" => ErrorType::NotFound,
            "invalid_request_error" | "request_too_large" => ErrorType::BadRequest,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Maps a non-2xx HTTP status (and its body, for quota exhaustion) to an [`ErrorType`].
///
/// Quota exhaustion hides behind ordinary statuses (OpenAI: 429 `insufficient_quota`;
/// Anthropic: 400 "credit balance is too low" / `billing_error`), and must stop the run
/// instead of being retried, so the body is inspected for those statuses only.
pub fn classify_status(kind: ProviderKind, status: u16, body: &[u8]) -> ErrorType {
    match status {
        401 | 403 => ErrorType::Auth,
        400 | 402 | 429 if is_quota_body(kind, body) => ErrorType::Quota,
        402 => ErrorType::Quota,
        429 => ErrorType::RateLimited,
        408 => ErrorType::Timeout,
        409 => ErrorType::Conflict,
        404 => ErrorType::NotFound,
        529 => ErrorType::Overloaded,
        // OpenAI sheds load with a 503 "The server is overloaded or not ready yet."
        503 if mentions_overload(body) => ErrorType::Overloaded,
        500..=599 => ErrorType::ServerError,
        400..=499 => ErrorType::BadRequest,
        // 1xx/3xx as a final answer: not something either API sends.
        _ => ErrorType::InvalidResponse,
    }
}

fn mentions_overload(body: &[u8]) -> bool {
    let head = &body[..body.len().min(2048)];
    String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .contains("overloaded")
}

fn is_quota_body(kind: ProviderKind, body: &[u8]) -> bool {
    let fields = provider::error_fields(body);
    let names = fields
        .as_ref()
        .map(|f| [f.kind.as_deref(), f.code.as_deref()]);
    let named = |wanted: &str| names.is_some_and(|n| n.contains(&Some(wanted)));
    let message = match &fields {
        Some(f) => f.message.to_ascii_lowercase(),
        None => String::from_utf8_lossy(&body[..body.len().min(2048)]).to_ascii_lowercase(),
    };
    match kind {
        ProviderKind::OpenAi => {
            named("insufficient_quota")
                || message.contains("exceeded your current quota")
                || message.contains("insufficient_quota")
        }
        ProviderKind::Anthropic => {
            named("billing_error") || message.contains("credit balance is too low")
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
    use ErrorType::*;
    use ProviderKind::{Anthropic, OpenAi};

    const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const OPENAI_RATE: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    const ANTHROPIC_CREDIT: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
    const ANTHROPIC_BILLING: &str =
        r#"{"type":"error","error":{"type":"billing_error","message":"Billing issue"}}"#;
    const ANTHROPIC_BAD: &str = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;

    #[test]
    fn classify_status_table() {
        let cases: &[(ProviderKind, u16, &str, ErrorType)] = &[
            (OpenAi, 401, "", Auth),
            (OpenAi, 403, "", Auth),
            (Anthropic, 401, "", Auth),
            (Anthropic, 403, ANTHROPIC_BILLING, Auth),
            (OpenAi, 429, OPENAI_QUOTA, Quota),
            (OpenAi, 429, "You exceeded your current quota", Quota),
            (OpenAi, 429, OPENAI_RATE, RateLimited),
            (OpenAi, 429, "", RateLimited),
            (Anthropic, 429, "", RateLimited),
            (Anthropic, 400, ANTHROPIC_CREDIT, Quota),
            (Anthropic, 400, ANTHROPIC_BILLING, Quota),
            (Anthropic, 400, ANTHROPIC_BAD, BadRequest),
            (OpenAi, 400, ANTHROPIC_BAD, BadRequest),
            (OpenAi, 402, "", Quota),
            (OpenAi, 408, "", Timeout),
            (OpenAi, 409, "", Conflict),
            (OpenAi, 404, "", NotFound),
            (OpenAi, 413, "", BadRequest),
            (OpenAi, 422, "", BadRequest),
            (OpenAi, 500, "", ServerError),
            (OpenAi, 502, "<html>bad gateway</html>", ServerError),
            (OpenAi, 503, "", ServerError),
            (
                OpenAi,
                503,
                r#"{"error":{"message":"The server is overloaded or not ready yet.","type":"server_error"}}"#,
                Overloaded,
            ),
            (OpenAi, 504, "", ServerError),
            (OpenAi, 520, "", ServerError),
            (Anthropic, 529, "", Overloaded),
            (OpenAi, 302, "", InvalidResponse),
        ];
        for &(kind, status, body, want) in cases {
            let got = classify_status(kind, status, body.as_bytes());
            assert_eq!(got, want, "{kind:?} {status} {body}");
        }
    }

    #[test]
    fn retryable_and_fatal_table() {
        let retryable = [
            RateLimited,
            ServerError,
            Overloaded,
            Timeout,
            Connection,
            IncompleteStream,
            Conflict,
        ];
        let fatal = [Auth, Quota];
        for t in ErrorType::ALL {
            assert_eq!(t.is_retryable(), retryable.contains(&t), "{t}");
            assert_eq!(t.is_fatal(), fatal.contains(&t), "{t}");
            assert!(!(t.is_retryable() && t.is_fatal()), "{t}");
        }
        // Every status DESIGN.md names as retryable classifies to a retryable type, and the rest
        // of 4xx never does.
        for status in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(
                classify_status(OpenAi, status, b"").is_retryable(),
                "{status}"
            );
        }
        for status in (400..500).filter(|s| ![408, 409, 429].contains(s)) {
            assert!(
                !classify_status(Anthropic, status, b"").is_retryable(),
                "{status}"
            );
        }
    }

    #[test]
    fn names_are_snake_case_and_unique() {
        let names: std::collections::HashSet<_> =
            ErrorType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), ErrorType::ALL.len());
        assert_eq!(IncompleteStream.to_string(), "incomplete_stream");
        assert_eq!(
            ErrorType::from_provider_name("overloaded_error"),
            Some(Overloaded)
        );
        assert_eq!(
            ErrorType::from_provider_name("rate_limit_error"),
            Some(RateLimited)
        );
        assert_eq!(
            ErrorType::from_provider_name("api_error"),
            Some(ServerError)
        );
        assert_eq!(ErrorType::from_provider_name("something_new"), None);
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
