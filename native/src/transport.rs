//! One HTTP attempt: send a prepared request, read a plain or SSE response, classify failures.
//!
//! CONTRACT (used by executor.rs; keep these names and signatures):
//! `send(client, kind, req, stream, timeout) -> Result<Success, AttemptError>`.
