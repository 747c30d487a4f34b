//! The project's own mock OpenAI/Anthropic server: deterministic replies, latency, rate limits, faults.
