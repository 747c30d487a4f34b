//! Server-sent events over a byte stream, stopping at the provider's final event.
