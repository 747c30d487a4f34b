//! The error cases the mock answers with; each provider module renders them in its own JSON.

use std::time::Duration;

/// Why the mock refuses a request. Status codes differ by provider only for [`ApiError::Quota`]
/// and [`ApiError::Overloaded`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ApiError {
    /// Wrong or missing key; `key` is echoed as sent so that client-side redaction is tested.
    Auth { key: String },
    /// Anthropic without the `anthropic-version` header.
    MissingVersion,
    /// A body the real API would reject (400).
    Invalid {
        message: String,
        /// OpenAI `param` (e.g. "messages[0].role").
        param: Option<String>,
        /// OpenAI `code` (e.g. "invalid_value").
        code: Option<&'static str>,
    },
    /// The last user message holds the configured bad marker (permanent 400).
    BadMarker,
    /// The account is out of credit (OpenAI 429 `insufficient_quota`, Anthropic 400).
    Quota,
    /// The token bucket is empty, or (`injected`) a 429 fault.
    RateLimited {
        /// Requests per minute (60 × the rate in force), 0 for an injected 429 without a limit.
        limit: u32,
        retry_after: Duration,
        injected: bool,
    },
    /// An injected server error: 500, 502, 503 or 529.
    Server(u16),
    /// A configured overload episode: Anthropic 529 `overloaded_error`, OpenAI 503
    /// `server_error` (OpenAI does not send 529).
    Overloaded,
    /// Unknown path.
    NotFound { path: String },
    /// Known path, wrong method.
    MethodNotAllowed,
    /// The request body could not be read or is too large.
    BodyTooLarge,
}

impl ApiError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ApiError::Invalid {
            message: message.into(),
            param: None,
            code: None,
        }
    }
}
