//! Anthropic's Message Batches API: `POST /v1/messages/batches`, `GET
//! /v1/messages/batches[/{id}]`, `POST .../cancel`, `GET .../results`.

use super::clock::{Clock, Phase};
use super::{
    answer_all, anthropic_error, delay, page, query_param, Answer, Born, Item, Shared, Store,
};
use crate::mock::server::Provider;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

/// Create bodies above this are refused (413 `request_too_large`).
pub(super) const MAX_BYTES: usize = 256 << 20;
const MAX_REQUESTS: usize = 100_000;
const DAY: f64 = 86_400.0;

/// One batch.
pub(super) struct Batch {
    id: String,
    born: Born,
    clock: Clock,
    /// Its requests with their answers, in the order the server does them.
    items: Vec<Item>,
}

/// RFC 3339 with microseconds, as Anthropic writes times.
fn rfc3339(unix: f64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_micros(at).to_string()
}

impl Batch {
    /// The batch object at time `t` (seconds since its creation); `host` makes `results_url`.
    fn object(&self, t: f64, host: &str) -> Value {
        let phase = self.clock.phase(t);
        let total = self.items.len();
        let done = &self.items[..self.clock.done(t)];
        let succeeded = done
            .iter()
            .filter(|i| (200..300).contains(&i.status))
            .count();
        let rest = total - done.len();
        let (processing, canceled, expired) = match phase {
            Phase::Expired => (0, 0, rest),
            Phase::Cancelled => (0, rest, 0),
            _ => (rest, 0, 0),
        };
        let at = |phase: Phase| {
            self.clock
                .entered(phase, t)
                .map(|s| rfc3339(self.born.unix + s))
        };
        let ended_at = at(Phase::Completed)
            .or_else(|| at(Phase::Expired))
            .or_else(|| at(Phase::Cancelled));
        let status = match phase {
            Phase::Cancelling => "canceling",
            p if p.is_final() => "ended",
            _ => "in_progress",
        };
        let results_url = phase
            .is_final()
            .then(|| format!("http://{host}/v1/messages/batches/{}/results", self.id));
        json!({
            "id": self.id, "type": "message_batch", "processing_status": status,
            "request_counts": {"processing": processing, "succeeded": succeeded,
                "errored": done.len() - succeeded, "canceled": canceled, "expired": expired},
            "ended_at": ended_at, "created_at": rfc3339(self.born.unix),
            "expires_at": rfc3339(self.born.unix + DAY), "archived_at": null,
            "cancel_initiated_at": at(Phase::Cancelling), "results_url": results_url,
        })
    }
}

fn invalid(message: &str) -> Answer {
    anthropic_error(400, "invalid_request_error", message)
}

fn not_found(id: &str) -> Answer {
    anthropic_error(
        404,
        "not_found_error",
        &format!("No message batch found with id '{id}'."),
    )
}

/// `GET /v1/messages/batches/{id}`
pub(super) fn get(store: &Store, id: &str, host: &str) -> Answer {
    let inner = store.lock();
    match inner.anthropic.iter().find(|b| b.id == id) {
        Some(batch) => Answer::ok(&batch.object(batch.born.elapsed(), host)),
        None => not_found(id),
    }
}

/// `GET /v1/messages/batches?limit=N&after_id=&before_id=`: newest first.
pub(super) fn list(store: &Store, query: Option<&str>, host: &str) -> Answer {
    let limit = match query_param(query, "limit").map(str::parse::<i64>) {
        None => 20,
        Some(Ok(n)) if (1..=1000).contains(&n) => n as usize,
        Some(_) => return invalid("limit: Input should be between 1 and 1000"),
    };
    let (after, before) = (
        query_param(query, "after_id"),
        query_param(query, "before_id"),
    );
    let inner = store.lock();
    let ids: Vec<&str> = inner
        .anthropic
        .iter()
        .rev()
        .map(|b| b.id.as_str())
        .collect();
    let (chosen, has_more) = page(&ids, limit, after, before);
    let data: Vec<Value> = chosen
        .iter()
        .filter_map(|id| inner.anthropic.iter().find(|b| b.id == *id))
        .map(|b| b.object(b.born.elapsed(), host))
        .collect();
    Answer::ok(
        &json!({"data": data, "has_more": has_more, "first_id": chosen.first(),
        "last_id": chosen.last()}),
    )
}

/// `POST /v1/messages/batches/{id}/cancel`: `canceling` for a tenth of `batch_seconds`, then
/// `ended`; requests done by then keep their results, the rest are `canceled`.
pub(super) fn cancel(shared: &Shared, store: &Store, id: &str, host: &str) -> Answer {
    let mut inner = store.lock();
    let Some(batch) = inner.anthropic.iter_mut().find(|b| b.id == id) else {
        return not_found(id);
    };
    let t = batch.born.elapsed();
    match batch.clock.phase(t) {
        Phase::Cancelling | Phase::Cancelled => {}
        phase if phase.is_final() => {
            return invalid(&format!(
                "Message batch {id} has already ended and cannot be canceled."
            ))
        }
        _ => {
            batch.clock.cancel(t);
            shared.stats.batch_cancelled();
        }
    }
    Answer::ok(&batch.object(t, host))
}

/// `GET /v1/messages/batches/{id}/results`: one JSON line per request, in the server's
/// (shuffled) order, once the batch has ended.
pub(super) fn results(store: &Store, id: &str) -> Answer {
    let inner = store.lock();
    let Some(batch) = inner.anthropic.iter().find(|b| b.id == id) else {
        return not_found(id);
    };
    let t = batch.born.elapsed();
    let phase = batch.clock.phase(t);
    if !phase.is_final() {
        return invalid(&format!(
            "Message batch {id} has not ended yet; its results are available once its \
             processing_status is \"ended\"."
        ));
    }
    let done = batch.clock.done(t);
    let mut out = Vec::new();
    for (k, item) in batch.items.iter().enumerate() {
        let raw = || {
            RawValue::from_string(item.body.clone())
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null"))
        };
        let result = if k >= done {
            match phase {
                Phase::Expired => json!({"type": "expired"}),
                _ => json!({"type": "canceled"}),
            }
        } else if (200..300).contains(&item.status) {
            json!({"type": "succeeded", "message": raw()})
        } else {
            json!({"type": "errored", "error": raw()})
        };
        let line = json!({"custom_id": item.custom_id, "result": result});
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    Answer {
        status: 200,
        body: Bytes::from(out),
        content_type: "application/x-jsonl",
    }
}

/// Whether `id` matches `^[a-zA-Z0-9_-]{1,64}$`.
fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The requests of a create body, checked as the API checks them at once (400); each one's
/// `params` is validated later, as the Messages API validates a body, its refusal becoming
/// that request's `errored` result (Anthropic validates params asynchronously).
fn check_create(body: &[u8]) -> Result<Vec<(String, Bytes)>, Answer> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("The request body is not valid JSON."));
    };
    let requests = match obj.get("requests") {
        None => return Err(invalid("requests: Field required")),
        Some(Value::Array(requests)) => requests,
        Some(_) => return Err(invalid("requests: Input should be a valid list")),
    };
    if requests.is_empty() {
        return Err(invalid(
            "requests: List should have at least 1 item after validation, not 0",
        ));
    }
    if requests.len() > MAX_REQUESTS {
        return Err(invalid(&format!(
            "requests: List should have at most {MAX_REQUESTS} items after validation, not {}",
            requests.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let Some(request) = request.as_object() else {
            return Err(invalid(&format!(
                "requests.{i}: Input should be a valid dictionary"
            )));
        };
        let custom_id = match request.get("custom_id") {
            None => return Err(invalid(&format!("requests.{i}.custom_id: Field required"))),
            Some(Value::String(id)) if valid_custom_id(id) => id,
            Some(Value::String(_)) => {
                return Err(invalid(&format!(
                    "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )))
            }
            Some(_) => {
                return Err(invalid(&format!(
                    "requests.{i}.custom_id: Input should be a valid string"
                )))
            }
        };
        if !seen.insert(custom_id.as_str()) {
            return Err(invalid(&format!(
                "requests.{i}.custom_id: Duplicate custom_id '{custom_id}'; each request in a \
                 batch must have a unique custom_id."
            )));
        }
        let params = match request.get("params") {
            None => return Err(invalid(&format!("requests.{i}.params: Field required"))),
            Some(params @ Value::Object(_)) => params,
            Some(_) => {
                return Err(invalid(&format!(
                    "requests.{i}.params: Input should be a valid dictionary"
                )))
            }
        };
        let params = Bytes::from(serde_json::to_vec(params).unwrap_or_default());
        out.push((custom_id.clone(), params));
    }
    Ok(out)
}

/// `POST /v1/messages/batches`. Waits `batch_delay_ms`, creates the batch (answering its
/// requests), waits again, then answers.
pub(super) async fn create(shared: &Shared, store: &Store, body: &[u8], host: &str) -> Answer {
    let requests = match check_create(body) {
        Ok(requests) => requests,
        Err(answer) => return answer,
    };
    delay(shared).await;
    let (number, expiring) = store.count_created(shared);
    let items = answer_all(shared, Provider::Anthropic, requests, number);
    let batch = Batch {
        id: format!("msgbatch_{}", shared.next_id()),
        born: Born::now(),
        clock: Clock::anthropic(shared.config.batch_seconds, items.len(), expiring),
        items,
    };
    shared.stats.batch_created(batch.items.len() as u64);
    let object = batch.object(0.0, host);
    store.lock().anthropic.push(batch);
    delay(shared).await;
    Answer::ok(&object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_follow_the_pattern() {
        assert!(valid_custom_id("row-1_A"));
        assert!(valid_custom_id(&"a".repeat(64)));
        assert!(!valid_custom_id(&"a".repeat(65)));
        assert!(!valid_custom_id(""));
        assert!(!valid_custom_id("a b"));
        assert!(!valid_custom_id("row.1"));
    }

    #[test]
    fn create_bodies_are_refused_as_the_api_does() {
        let refused = |body: Value| match check_create(body.to_string().as_bytes()) {
            Err(answer) => String::from_utf8(answer.body.to_vec()).unwrap(),
            Ok(_) => panic!("accepted {body}"),
        };
        assert!(refused(json!({})).contains("requests: Field required"));
        assert!(refused(json!({"requests": []})).contains("at least 1 item"));
        let bad_id = refused(json!({"requests": [{"custom_id": "a.b", "params": {}}]}));
        assert!(bad_id.contains("requests.0.custom_id: String should match pattern"));
        assert!(bad_id.contains("invalid_request_error"));
        let dup = refused(json!({"requests": [{"custom_id": "a", "params": {}},
            {"custom_id": "a", "params": {}}]}));
        assert!(dup.contains("requests.1.custom_id: Duplicate"));
        assert!(
            refused(json!({"requests": [{"custom_id": "a", "params": 3}]}))
                .contains("requests.0.params: Input should be a valid dictionary")
        );
        let Ok(ok) = check_create(
            json!({"requests": [{"custom_id": "a", "params": {"model": "m"}}]})
                .to_string()
                .as_bytes(),
        ) else {
            panic!("refused")
        };
        assert_eq!(ok[0].0, "a");
    }
}
