//! Retry policy: classifying a failed attempt, deciding whether to retry, and backoff with jitter.
