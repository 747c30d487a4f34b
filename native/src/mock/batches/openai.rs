//! OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST .../cancel`, and the
//! output and error files a batch leaves in the Files API when it ends.

use super::clock::{Clock, Phase};
use super::files::{self, File};
use super::{
    answer_all, delay, openai_error, page, query_param, Answer, Born, Inner, Item, Shared, Store,
};
use crate::mock::server::Provider;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// The one endpoint the mock serves in a batch.
const ENDPOINT: &str = "/v1/chat/completions";
/// Endpoints the real API takes but the mock does not serve.
const NOT_SERVED: [&str; 3] = ["/v1/completions", "/v1/embeddings", "/v1/responses"];
const MAX_LINES: usize = 50_000;
const MAX_FILE_BYTES: usize = 200 << 20;
/// Validation errors reported at most (a bound on a bad file's error list).
const MAX_ERRORS: usize = 1000;
const EXPIRED: &str = "This request could not be executed before the completion window expired.";
const CANCELLED: &str = "This request was cancelled before it could be executed.";
const DAY: u64 = 86_400;

/// One batch.
pub(super) struct Batch {
    id: String,
    input_file_id: String,
    metadata: Value,
    born: Born,
    clock: Clock,
    /// Its requests with their answers, in the order the server does them.
    items: Vec<Item>,
    /// Why its input failed validation (empty when it passed).
    errors: Vec<Value>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    /// Its files are written (it ended and was looked at since).
    settled: bool,
}

impl Batch {
    /// The batch object at time `t` (seconds since its creation).
    fn object(&self, t: f64) -> Value {
        let phase = self.clock.phase(t);
        let at = |phase: Phase| {
            self.clock
                .entered(phase, t)
                .map(|s| (self.born.unix + s) as u64)
        };
        let status = match phase {
            Phase::Validating => "validating",
            Phase::Failed => "failed",
            Phase::InProgress => "in_progress",
            Phase::Finalizing => "finalizing",
            Phase::Completed => "completed",
            Phase::Expired => "expired",
            Phase::Cancelling => "cancelling",
            Phase::Cancelled => "cancelled",
        };
        let counted = !matches!(phase, Phase::Validating | Phase::Failed);
        let done = &self.items[..self.clock.done(t)];
        let ok = done.iter().filter(|i| is_success(i.status)).count();
        let (total, completed, failed) = if counted {
            (self.items.len(), ok, done.len() - ok)
        } else {
            (0, 0, 0)
        };
        let errors =
            (!self.errors.is_empty()).then(|| json!({"object": "list", "data": self.errors}));
        let created = self.born.unix as u64;
        json!({
            "id": self.id, "object": "batch", "endpoint": ENDPOINT, "errors": errors,
            "input_file_id": self.input_file_id, "completion_window": "24h", "status": status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": created, "in_progress_at": at(Phase::InProgress),
            "expires_at": created + DAY, "finalizing_at": at(Phase::Finalizing),
            "completed_at": at(Phase::Completed), "failed_at": at(Phase::Failed),
            "expired_at": at(Phase::Expired), "cancelling_at": at(Phase::Cancelling),
            "cancelled_at": at(Phase::Cancelled),
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "metadata": self.metadata,
        })
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Writes an ended batch's output and error files (once): the answers done by its end, 2xx in
/// the output file, others in the error file; the requests never run in the error file as
/// `batch_expired` (an expired batch) or `batch_cancelled` (a cancelled one). A file with no
/// line is not written (its id stays null).
fn settle(files: &mut std::collections::HashMap<String, File>, batch: &mut Batch, shared: &Shared) {
    let t = batch.born.elapsed();
    let phase = batch.clock.phase(t);
    if batch.settled || !phase.is_final() {
        return;
    }
    batch.settled = true;
    let done = batch.clock.done(t);
    let (mut output, mut errors) = (Vec::new(), Vec::new());
    for (k, item) in batch.items.iter().enumerate() {
        let id = format!("batch_req_{}", item.id);
        let line = if k < done {
            let body = RawValue::from_string(item.body.clone())
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null"));
            json!({"id": id, "custom_id": item.custom_id, "response": {
                "status_code": item.status, "request_id": format!("req_{}", item.id),
                "body": body}, "error": null})
        } else {
            let (code, message) = match phase {
                Phase::Expired => ("batch_expired", EXPIRED),
                _ => ("batch_cancelled", CANCELLED),
            };
            json!({"id": id, "custom_id": item.custom_id, "response": null,
                "error": {"code": code, "message": message}})
        };
        let target = if k < done && is_success(item.status) {
            &mut output
        } else {
            &mut errors
        };
        target.extend_from_slice(line.to_string().as_bytes());
        target.push(b'\n');
    }
    let mut store = |lines: Vec<u8>, kind: &str| {
        if lines.is_empty() {
            return None;
        }
        let name = format!("{}_{kind}.jsonl", batch.id);
        let file = File::new(
            format!("file-{}", shared.next_id()),
            name,
            "batch_output",
            Bytes::from(lines),
        );
        let id = file.id.clone();
        files.insert(id.clone(), file);
        Some(id)
    };
    batch.output_file_id = store(output, "output");
    batch.error_file_id = store(errors, "error");
}

fn not_found(id: &str) -> Answer {
    openai_error(404, &format!("No batch found with id '{id}'."), None, None)
}

/// The batch `id`'s object (settled), or its 404.
pub(super) fn get(shared: &Shared, store: &Store, id: &str) -> Answer {
    let mut inner = store.lock();
    let Inner { files, openai, .. } = &mut *inner;
    match openai.iter_mut().find(|b| b.id == id) {
        Some(batch) => {
            settle(files, batch, shared);
            Answer::ok(&batch.object(batch.born.elapsed()))
        }
        None => not_found(id),
    }
}

/// `GET /v1/batches?limit=N&after=ID`: newest first.
pub(super) fn list(shared: &Shared, store: &Store, query: Option<&str>) -> Answer {
    let limit = match query_param(query, "limit").map(str::parse::<i64>) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n as usize,
        Some(_) => {
            return openai_error(
                400,
                "Invalid 'limit': expected an integer between 1 and 100.",
                Some("limit"),
                Some("invalid_value"),
            )
        }
    };
    let after = query_param(query, "after");
    let mut inner = store.lock();
    let Inner { files, openai, .. } = &mut *inner;
    let ids: Vec<String> = openai.iter().rev().map(|b| b.id.clone()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (chosen, has_more) = page(&refs, limit, after, None);
    let mut data = Vec::with_capacity(chosen.len());
    for id in &chosen {
        if let Some(batch) = openai.iter_mut().find(|b| b.id == *id) {
            settle(files, batch, shared);
            data.push(batch.object(batch.born.elapsed()));
        }
    }
    Answer::ok(
        &json!({"object": "list", "data": data, "first_id": chosen.first(),
        "last_id": chosen.last(), "has_more": has_more}),
    )
}

/// `POST /v1/batches/{id}/cancel`: `cancelling` (for a tenth of `batch_seconds`), then
/// `cancelled`. A cancelled or cancelling batch is returned as it is; an ended one is a 409.
pub(super) fn cancel(shared: &Shared, store: &Store, id: &str) -> Answer {
    let mut inner = store.lock();
    let Some(batch) = inner.openai.iter_mut().find(|b| b.id == id) else {
        return not_found(id);
    };
    let t = batch.born.elapsed();
    match batch.clock.phase(t) {
        Phase::Cancelling | Phase::Cancelled => {}
        phase @ (Phase::Completed | Phase::Failed | Phase::Expired) => {
            let status = batch.object(t)["status"].clone();
            let status = status.as_str().unwrap_or_default();
            debug_assert!(phase.is_final());
            return openai_error(
                409,
                &format!("Cannot cancel a batch with status '{status}'."),
                None,
                None,
            );
        }
        _ => {
            batch.clock.cancel(t);
            shared.stats.batch_cancelled();
        }
    }
    Answer::ok(&batch.object(t))
}

/// The create request's fields, checked as OpenAI checks them (400s, a 404 for an unknown
/// input file).
struct CreateRequest {
    input_file_id: String,
    metadata: Value,
}

fn check_create(store: &Store, body: &[u8]) -> Result<(CreateRequest, Bytes), Answer> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(openai_error(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            None,
            None,
        ));
    };
    let string = |name: &str| match obj.get(name) {
        None | Some(Value::Null) => Err(openai_error(
            400,
            &format!("Missing required parameter: '{name}'."),
            Some(name),
            Some("missing_required_parameter"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(openai_error(
            400,
            &format!("Invalid type for '{name}': expected a string."),
            Some(name),
            Some("invalid_type"),
        )),
    };
    let input_file_id = string("input_file_id")?;
    let endpoint = string("endpoint")?;
    let window = string("completion_window")?;
    if NOT_SERVED.contains(&endpoint.as_str()) {
        let message = format!(
            "The mock server serves batches for '{ENDPOINT}' only; '{endpoint}' is not served."
        );
        return Err(openai_error(
            400,
            &message,
            Some("endpoint"),
            Some("invalid_value"),
        ));
    }
    if endpoint != ENDPOINT {
        let message = format!(
            "Invalid value: '{endpoint}'. Supported values are: '/v1/chat/completions', \
             '/v1/completions', '/v1/embeddings', and '/v1/responses'."
        );
        return Err(openai_error(
            400,
            &message,
            Some("endpoint"),
            Some("invalid_value"),
        ));
    }
    if window != "24h" {
        let message = format!("Invalid value: '{window}'. Supported values are: '24h'.");
        return Err(openai_error(
            400,
            &message,
            Some("completion_window"),
            Some("invalid_value"),
        ));
    }
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(map)) => {
            check_metadata(map)?;
            Value::Object(map.clone())
        }
        Some(_) => {
            return Err(openai_error(
                400,
                "Invalid type for 'metadata': expected an object.",
                Some("metadata"),
                Some("invalid_type"),
            ))
        }
    };
    let inner = store.lock();
    let Some(file) = inner.files.get(&input_file_id) else {
        return Err(files::not_found(&input_file_id));
    };
    if file.purpose != "batch" {
        let message = format!(
            "The input file {input_file_id} has purpose '{}'; a batch's input file must be \
             uploaded with purpose 'batch'.",
            file.purpose
        );
        return Err(openai_error(
            400,
            &message,
            Some("input_file_id"),
            Some("invalid_value"),
        ));
    }
    let bytes = file.bytes.clone();
    Ok((
        CreateRequest {
            input_file_id,
            metadata,
        },
        bytes,
    ))
}

/// At most 16 pairs, keys of at most 64 characters, string values of at most 512.
fn check_metadata(map: &Map<String, Value>) -> Result<(), Answer> {
    if map.len() > 16 {
        let message = format!(
            "Invalid 'metadata': too many properties. Expected an object with at most 16 \
             properties, but got an object with {} properties instead.",
            map.len()
        );
        return Err(openai_error(
            400,
            &message,
            Some("metadata"),
            Some("object_above_max_properties"),
        ));
    }
    for (key, value) in map {
        let param = format!("metadata.{key}");
        if key.chars().count() > 64 {
            let message = format!(
                "Invalid 'metadata': key '{key}' is too long. Expected a key with maximum \
                 length 64."
            );
            return Err(openai_error(
                400,
                &message,
                Some("metadata"),
                Some("string_above_max_length"),
            ));
        }
        let Value::String(text) = value else {
            let message = format!(
                "Invalid type for '{param}': expected a string, but got {} instead.",
                crate::mock::request::json_kind(value)
            );
            return Err(openai_error(
                400,
                &message,
                Some(&param),
                Some("invalid_type"),
            ));
        };
        if text.chars().count() > 512 {
            let message = format!(
                "Invalid '{param}': string too long. Expected a string with maximum length \
                 512, but got a string with length {} instead.",
                text.chars().count()
            );
            return Err(openai_error(
                400,
                &message,
                Some(&param),
                Some("string_above_max_length"),
            ));
        }
    }
    Ok(())
}

fn line_error(code: &str, message: &str, param: Option<&str>, line: Option<usize>) -> Value {
    json!({"code": code, "message": message, "param": param, "line": line})
}

/// Validates an input file as OpenAI's `validating` does: every line JSON with `custom_id`
/// (unique), `method` POST, `url` the batch's endpoint and a `body` naming a model (one model
/// for the whole file, no streaming); at most 50,000 lines and 200 MB. The requests (custom
/// id, body), or the errors (one per bad line, at most [`MAX_ERRORS`]).
fn validate(data: &[u8]) -> Result<Vec<(String, Bytes)>, Vec<Value>> {
    if data.len() > MAX_FILE_BYTES {
        let message = format!(
            "The batch input file is larger than the {MAX_FILE_BYTES} maximum. Please try \
             again with a smaller batch."
        );
        return Err(vec![line_error("file_too_large", &message, None, None)]);
    }
    let lines: Vec<(usize, &[u8])> = data
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(i, line)| (i + 1, line))
        .collect();
    if lines.len() > MAX_LINES {
        let message = format!(
            "The batch input file has {} requests; a batch takes at most {MAX_LINES}.",
            lines.len()
        );
        return Err(vec![line_error("too_many_requests", &message, None, None)]);
    }
    if lines.is_empty() {
        return Err(vec![line_error(
            "empty_file",
            "The batch input file is empty.",
            None,
            None,
        )]);
    }
    let mut seen = std::collections::HashSet::new();
    let mut model: Option<String> = None;
    let mut requests = Vec::with_capacity(lines.len());
    let mut errors = Vec::new();
    for (number, line) in lines {
        match check_line(line, &mut seen, &mut model) {
            Ok(request) => requests.push(request),
            Err((code, message, param)) => {
                if errors.len() < MAX_ERRORS {
                    errors.push(line_error(code, &message, param, Some(number)));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(requests)
    } else {
        Err(errors)
    }
}

type LineError = (&'static str, String, Option<&'static str>);

fn check_line(
    line: &[u8],
    seen: &mut std::collections::HashSet<String>,
    model: &mut Option<String>,
) -> Result<(String, Bytes), LineError> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(line) else {
        return Err((
            "invalid_json_line",
            "This line is not parseable as valid JSON.".into(),
            None,
        ));
    };
    for name in ["custom_id", "method", "url", "body"] {
        if obj.get(name).is_none_or(Value::is_null) {
            return Err((
                "missing_required_parameter",
                format!("Missing required parameter: '{name}'."),
                Some(name),
            ));
        }
    }
    let Some(custom_id) = obj["custom_id"].as_str() else {
        let message = "Invalid type for 'custom_id': expected a string.".into();
        return Err(("invalid_type", message, Some("custom_id")));
    };
    if obj["method"].as_str() != Some("POST") {
        let message = "Invalid value for 'method': only 'POST' is supported.".into();
        return Err(("invalid_value", message, Some("method")));
    }
    if obj["url"].as_str() != Some(ENDPOINT) {
        let message = "The URL provided for this request does not match the batch endpoint.";
        return Err(("invalid_url", message.into(), Some("url")));
    }
    let Some(body) = obj["body"].as_object() else {
        let message = "Invalid type for 'body': expected an object.".into();
        return Err(("invalid_type", message, Some("body")));
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let message = "Chat Completions: Streaming is not supported in the Batch API.".into();
        return Err(("streaming_unsupported", message, Some("body.stream")));
    }
    let Some(this_model) = body.get("model").and_then(Value::as_str) else {
        let message = "Model parameter is required.".into();
        return Err(("invalid_request", message, Some("body.model")));
    };
    if body.get("messages").is_none() {
        let message = "Messages parameter is required.".into();
        return Err(("invalid_request", message, Some("body.messages")));
    }
    match model {
        Some(first) if first != this_model => {
            let message = format!(
                "The model '{this_model}' differs from the batch's model '{first}'; a batch \
                 input file must use one model."
            );
            return Err(("mismatched_model", message, Some("body.model")));
        }
        Some(_) => {}
        None => *model = Some(this_model.to_string()),
    }
    if !seen.insert(custom_id.to_string()) {
        let message = "The custom_id for this request is a duplicate of another request. The \
                       custom_id parameter must be unique for each individual request in a batch.";
        return Err(("duplicate_custom_id", message.into(), Some("custom_id")));
    }
    let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    Ok((custom_id.to_string(), body))
}

/// `POST /v1/batches`. The checks refuse at once (400, 404); the input file's lines are
/// validated as part of the batch (it fails after validating). Waits `batch_delay_ms`, creates
/// the batch (answering its requests), waits again, then answers.
pub(super) async fn create(shared: &Shared, store: &Store, body: &[u8]) -> Answer {
    let (request, data) = match check_create(store, body) {
        Ok(checked) => checked,
        Err(answer) => return answer,
    };
    delay(shared).await;
    let (number, expiring) = store.count_created(shared);
    let (items, errors) = match validate(&data) {
        Ok(requests) => (
            answer_all(shared, Provider::OpenAi, requests, number),
            Vec::new(),
        ),
        Err(errors) => (Vec::new(), errors),
    };
    let mut clock = Clock::openai(shared.config.batch_seconds, items.len(), expiring);
    clock.invalid = !errors.is_empty();
    let batch = Batch {
        id: format!("batch_{}", shared.next_id()),
        input_file_id: request.input_file_id,
        metadata: request.metadata,
        born: Born::now(),
        clock,
        items,
        errors,
        output_file_id: None,
        error_file_id: None,
        settled: false,
    };
    shared.stats.batch_created(batch.items.len() as u64);
    let object = batch.object(0.0);
    store.lock().openai.push(batch);
    delay(shared).await;
    Answer::ok(&object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(custom_id: &str, model: &str) -> String {
        json!({"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}})
        .to_string()
    }

    #[test]
    fn a_good_file_validates_into_its_requests() {
        let data = format!("{}\n\n{}\n", line("a", "m"), line("b", "m"));
        let requests = validate(data.as_bytes()).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].0, "b");
        let body: Value = serde_json::from_slice(&requests[0].1).unwrap();
        assert_eq!(body["model"], "m");
    }

    #[test]
    fn each_bad_line_gets_its_code_and_number() {
        let lines = [
            line("a", "m"),
            "{not json".to_string(),
            json!({"method": "POST", "url": ENDPOINT, "body": {}}).to_string(),
            json!({"custom_id": "c", "method": "GET", "url": ENDPOINT, "body": {}}).to_string(),
            json!({"custom_id": "d", "method": "POST", "url": "/v1/embeddings", "body": {}})
                .to_string(),
            line("a", "m"),
            line("e", "other"),
            json!({"custom_id": "f", "method": "POST", "url": ENDPOINT,
                "body": {"model": "m", "messages": [], "stream": true}})
            .to_string(),
            json!({"custom_id": "g", "method": "POST", "url": ENDPOINT,
                "body": {"messages": []}})
            .to_string(),
        ];
        let errors = validate(lines.join("\n").as_bytes()).unwrap_err();
        let got: Vec<(&str, u64)> = errors
            .iter()
            .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("invalid_json_line", 2),
                ("missing_required_parameter", 3),
                ("invalid_value", 4),
                ("invalid_url", 5),
                ("duplicate_custom_id", 6),
                ("mismatched_model", 7),
                ("streaming_unsupported", 8),
                ("invalid_request", 9),
            ]
        );
        assert_eq!(errors[1]["param"], "custom_id");
        let many = vec![line("x", "m"); MAX_LINES + 1].join("\n");
        let errors = validate(many.as_bytes()).unwrap_err();
        assert_eq!(errors[0]["code"], "too_many_requests");
        assert_eq!(errors[0]["line"], Value::Null);
    }
}
