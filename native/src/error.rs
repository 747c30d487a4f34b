//! The crate's error types: [`Error`] for setup and API misuse, [`ErrorType`] for why one
//! request failed (the classification every layer shares: providers and transport set it, the
//! retry driver and the executor act on it, the output writes it).

/// Errors that stop a call before or outside any request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run or mock configuration could not be understood.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A socket or file operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The run was stopped: by a fatal provider answer (auth, quota) or a cancel.
    #[error("{0}")]
    Stopped(String),
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Config(err.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// The run was stopped before this request finished (or, in a Batch API run, the batch
    /// was cancelled before the provider ran it).
    Cancelled,
    /// The provider's Batch API did not run the request before the batch expired (its
    /// completion window ended). Not fatal, and never retried live: the batch engine decides
    /// whether to send it again.
    Expired,
}

impl ErrorType {
    /// Every variant, for tests and for code that builds per-type counters.
    pub const ALL: [ErrorType; 14] = [
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
        ErrorType::Expired,
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
            ErrorType::Expired => "expired",
        }
    }

    /// Whether another attempt may succeed (ARCHITECTURE.md "Executor rules").
    ///
    /// A 2xx with an unparseable body is not retried: the same request gets the same answer,
    /// and ARCHITECTURE.md "Retries" lists the retryable cases exhaustively.
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

    /// The type an [`ErrorType::as_str`] name stands for (`"expired"`, `"server_error"`, ...).
    pub fn from_name(name: &str) -> Option<ErrorType> {
        ErrorType::ALL.into_iter().find(|t| t.as_str() == name)
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

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorType::{self, *};

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
    }

    #[test]
    fn names_are_snake_case_and_unique() {
        let names: std::collections::HashSet<_> =
            ErrorType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), ErrorType::ALL.len());
        assert_eq!(IncompleteStream.to_string(), "incomplete_stream");
        for t in ErrorType::ALL {
            assert_eq!(ErrorType::from_name(t.as_str()), Some(t));
        }
        assert_eq!(ErrorType::from_name("expired"), Some(Expired));
        assert_eq!(ErrorType::from_name("Expired"), None);
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
}
