//! The tracing subscriber: a level filter, text or JSON lines, always on stderr, installed once.
//!
//! Spans and events never carry an API key or request headers: keys live in `ApiKey`, which
//! prints as `***`, and the transport redacts keys that providers echo back.

use crate::error::{Error, Result};
use tracing_subscriber::EnvFilter;

/// Installs the process-wide subscriber. `level` is a level (`error`, `warn`/`warning`, `info`,
/// `debug`, `trace`, `off`) or an `EnvFilter` directive list (`prompt_runner=debug,info`);
/// `json` writes one JSON object per line. Returns `false` (and changes nothing) when a
/// subscriber is already installed.
pub fn init(level: &str, json: bool) -> Result<bool> {
    let filter = filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let installed = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    Ok(installed.is_ok())
}

/// Parses a level or directive list, accepting Python's `warning` and `critical` too.
pub fn filter(level: &str) -> Result<EnvFilter> {
    let level = level.trim().to_ascii_lowercase();
    let level = match level.as_str() {
        "warning" => "warn",
        "critical" | "fatal" => "error",
        other => other,
    };
    EnvFilter::try_new(level).map_err(|e| Error::Config(format!("log level {level:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_parse() {
        for level in [
            "info",
            "WARNING",
            "debug",
            "off",
            "prompt_runner=debug,warn",
        ] {
            assert!(filter(level).is_ok(), "{level}");
        }
        assert!(filter("loud=").is_err() || filter("[").is_err());
    }
}
