//! The crate's error type for setup and API misuse; per-row failures are `retry::ErrorType`.

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
