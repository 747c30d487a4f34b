//! End-to-end tests of the mock's Batch APIs over real HTTP (OpenAI Files and Batches,
//! Anthropic Message Batches).

use super::{MockConfig, MockServer};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const KEY: &str = "mock-key";

fn start(config: MockConfig) -> MockServer {
    MockServer::start(config, "127.0.0.1:0".parse().expect("addr")).expect("start mock")
}

fn fast() -> MockConfig {
    MockConfig {
        batch_seconds: 0.4,
        ..MockConfig::default()
    }
}

fn client() -> reqwest::Client {
    crate::runtime::install_crypto_provider();
    reqwest::Client::new()
}

/// A response's status and body text.
struct Reply {
    status: u16,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn lines(&self) -> Vec<Value> {
        self.text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }
}

/// Sends `method path` with the provider's auth (Anthropic for `/v1/messages/...`).
async fn call(srv: &MockServer, method: &str, path: &str, body: Option<Value>) -> Reply {
    let url = format!("http://{}{path}", srv.local_addr());
    let mut req = client().request(method.parse().unwrap(), url);
    req = if path.starts_with("/v1/messages") {
        req.header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
    } else {
        req.header("authorization", format!("Bearer {KEY}"))
    };
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = req.send().await.expect("request");
    Reply {
        status: resp.status().as_u16(),
        text: resp.text().await.expect("body"),
    }
}

/// A multipart/form-data body with the given text fields and, optionally, a file.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "mockboundary7MA4YWxk";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((filename, data)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"{filename}\"\r\nContent-Type: application/jsonl\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload_parts(
    srv: &MockServer,
    fields: &[(&str, &str)],
    file: Option<(&str, &[u8])>,
) -> Reply {
    let (content_type, body) = multipart(fields, file);
    let resp = client()
        .post(format!("http://{}/v1/files", srv.local_addr()))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    Reply {
        status: resp.status().as_u16(),
        text: resp.text().await.expect("body"),
    }
}

/// Uploads `data` as a batch input file; its id.
async fn upload(srv: &MockServer, data: &str) -> String {
    let r = upload_parts(
        srv,
        &[("purpose", "batch")],
        Some(("input.jsonl", data.as_bytes())),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["id"].as_str().unwrap().to_string()
}

fn openai_line(custom_id: &str, text: &str) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}})
    .to_string()
}

/// An input file of `n` requests `r0`..; those in `bad` carry the bad marker.
fn openai_file(n: usize, bad: &[usize]) -> String {
    (0..n)
        .map(|i| {
            let text = if bad.contains(&i) {
                format!("q{i} [[bad]]")
            } else {
                format!("q{i}")
            };
            openai_line(&format!("r{i}"), &text)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn create_openai(srv: &MockServer, file_id: &str) -> Value {
    let r = call(
        srv,
        "POST",
        "/v1/batches",
        Some(
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"run": "t"}}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// Polls a batch until `done(batch)`; every status seen on the way, and the last object.
async fn poll_until(
    srv: &MockServer,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> (Vec<String>, Value) {
    let mut seen = Vec::new();
    for _ in 0..400 {
        let batch = call(srv, "GET", path, None).await.json();
        let status = batch["status"]
            .as_str()
            .or(batch["processing_status"].as_str())
            .unwrap()
            .to_string();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if done(&batch) {
            return (seen, batch);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{path} never got there: {seen:?}");
}

fn openai_ended(b: &Value) -> bool {
    ["completed", "failed", "expired", "cancelled"].contains(&b["status"].as_str().unwrap())
}

fn anthropic_ended(b: &Value) -> bool {
    b["processing_status"] == "ended"
}

async fn file_lines(srv: &MockServer, id: &Value) -> Vec<Value> {
    match id.as_str() {
        Some(id) => {
            let r = call(srv, "GET", &format!("/v1/files/{id}/content"), None).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.lines()
        }
        None => Vec::new(),
    }
}

fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every id of `0..n` once across `ids`, and not in input order.
fn all_once_shuffled(ids: &[String], n: usize) {
    let set: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "a custom_id came back twice: {ids:?}");
    assert_eq!(ids.len(), n, "{ids:?}");
    let input: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    assert_ne!(ids, input, "results in input order");
}

#[tokio::test]
async fn an_openai_batch_runs_end_to_end() {
    let srv = start(fast());
    let file_id = upload(&srv, &openai_file(30, &[3, 7])).await;
    assert!(file_id.starts_with("file-"));
    let file = call(&srv, "GET", &format!("/v1/files/{file_id}"), None).await;
    let file = file.json();
    assert_eq!(
        (file["object"].clone(), file["purpose"].clone()),
        (json!("file"), json!("batch"))
    );
    let content = call(&srv, "GET", &format!("/v1/files/{file_id}/content"), None).await;
    assert_eq!(content.text, openai_file(30, &[3, 7]));

    let batch = create_openai(&srv, &file_id).await;
    let id = batch["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("batch_"), "{id}");
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["status"], "validating");
    assert_eq!(batch["metadata"], json!({"run": "t"}));
    assert_eq!(batch["output_file_id"], Value::Null);
    let path = format!("/v1/batches/{id}");
    let (seen, batch) = poll_until(&srv, &path, openai_ended).await;
    assert_eq!(seen.first().unwrap(), "validating");
    assert!(seen.contains(&"in_progress".to_string()), "{seen:?}");
    assert_eq!(seen.last().unwrap(), "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 30, "completed": 28, "failed": 2})
    );
    for key in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(batch[key].as_u64().is_some(), "{key}: {batch}");
    }
    assert_eq!(batch["cancelled_at"], Value::Null);
    let output = file_lines(&srv, &batch["output_file_id"]).await;
    let errors = file_lines(&srv, &batch["error_file_id"]).await;
    assert_eq!((output.len(), errors.len()), (28, 2));
    let line = output
        .iter()
        .find(|l| l["custom_id"] == "r5")
        .expect("r5 answered");
    assert!(line["id"].as_str().unwrap().starts_with("batch_req_"));
    assert_eq!(line["error"], Value::Null);
    assert_eq!(line["response"]["status_code"], 200);
    assert_eq!(
        line["response"]["body"]["choices"][0]["message"]["content"],
        "Echo: q5"
    );
    for e in &errors {
        assert_eq!(e["response"]["status_code"], 400);
        assert_eq!(e["response"]["body"]["error"]["code"], "invalid_prompt");
    }
    let mut ids = custom_ids(&output);
    ids.extend(custom_ids(&errors));
    all_once_shuffled(&ids, 30);

    let stats = srv.stats();
    assert_eq!(stats.files_uploaded, 1);
    assert_eq!((stats.batches_created, stats.batch_requests), (1, 30));
    assert!(stats.by_path["/v1/batches/{id}"] >= 2);
    assert_eq!(stats.by_path["/v1/files"], 1);
    assert!(stats.by_path.keys().all(|p| !p.contains("batch_")));
    // The batch's requests are not HTTP requests of the chat path.
    assert_eq!(stats.by_path.get("/v1/chat/completions"), None);
    // A stats reset keeps batches and files.
    srv.reset_stats();
    assert_eq!(call(&srv, "GET", &path, None).await.status, 200);
    assert_eq!(srv.stats().batches_created, 0);
}

/// An Anthropic create body of `n` requests `r0`..; those in `bad` carry the bad marker, and
/// those in `invalid` lack `max_tokens`.
fn anthropic_requests(n: usize, bad: &[usize], invalid: &[usize]) -> Value {
    let requests: Vec<Value> = (0..n)
        .map(|i| {
            let text = if bad.contains(&i) {
                format!("q{i} [[bad]]")
            } else {
                format!("q{i}")
            };
            let mut params = json!({"model": "claude-x", "max_tokens": 50,
                "messages": [{"role": "user", "content": text}]});
            if invalid.contains(&i) {
                params.as_object_mut().unwrap().remove("max_tokens");
            }
            json!({"custom_id": format!("r{i}"), "params": params})
        })
        .collect();
    json!({ "requests": requests })
}

#[tokio::test]
async fn an_anthropic_batch_runs_end_to_end() {
    let srv = start(fast());
    let r = call(
        &srv,
        "POST",
        "/v1/messages/batches",
        Some(anthropic_requests(25, &[2], &[4])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let batch = r.json();
    let id = batch["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("msgbatch_"), "{id}");
    assert_eq!(batch["type"], "message_batch");
    assert_eq!(batch["processing_status"], "in_progress");
    assert_eq!(batch["results_url"], Value::Null);
    assert_eq!(batch["request_counts"]["processing"], 25);
    assert!(batch["created_at"].as_str().unwrap().ends_with('Z'));
    let results_path = format!("/v1/messages/batches/{id}/results");
    let early = call(&srv, "GET", &results_path, None).await;
    assert_eq!(early.status, 400, "{}", early.text);
    assert_eq!(early.json()["error"]["type"], "invalid_request_error");

    let (_, batch) = poll_until(&srv, &format!("/v1/messages/batches/{id}"), anthropic_ended).await;
    assert_eq!(
        batch["request_counts"],
        json!({"processing": 0, "succeeded": 23, "errored": 2, "canceled": 0, "expired": 0})
    );
    assert!(batch["ended_at"].is_string());
    assert_eq!(
        batch["results_url"],
        format!("http://{}{results_path}", srv.local_addr())
    );
    let lines = call(&srv, "GET", &results_path, None).await.lines();
    all_once_shuffled(&custom_ids(&lines), 25);
    let result = |id: &str| {
        lines
            .iter()
            .find(|l| l["custom_id"] == id)
            .map(|l| l["result"].clone())
            .unwrap()
    };
    assert_eq!(result("r0")["type"], "succeeded");
    assert_eq!(result("r0")["message"]["content"][0]["text"], "Echo: q0");
    assert_eq!(result("r2")["type"], "errored");
    assert_eq!(result("r2")["error"]["type"], "error");
    assert_eq!(
        result("r2")["error"]["error"]["type"],
        "invalid_request_error"
    );
    // Params are validated as a Messages body, asynchronously: an errored result.
    assert_eq!(result("r4")["type"], "errored");
    assert!(result("r4")["error"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    // A batch that ended cannot be cancelled.
    let r = call(
        &srv,
        "POST",
        &format!("/v1/messages/batches/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let stats = srv.stats();
    assert_eq!((stats.batches_created, stats.batch_requests), (1, 25));
    assert!(stats.by_path["/v1/messages/batches/{id}/results"] >= 2);
}

#[tokio::test]
async fn refusals_have_the_providers_shapes() {
    let srv = start(fast());
    // Files: missing parts, a bad purpose, a batch file that is not JSONL.
    let r = upload_parts(&srv, &[], Some(("a.jsonl", b"{}"))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "purpose");
    let r = upload_parts(&srv, &[("purpose", "batch")], None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "file");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = upload_parts(&srv, &[("purpose", "nope")], Some(("a.jsonl", b"{}"))).await;
    assert_eq!(r.status, 400);
    let r = upload_parts(&srv, &[("purpose", "batch")], Some(("a.jsonl", b"{x"))).await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("Must be .jsonl"), "{}", r.text);
    let r = call(&srv, "GET", "/v1/files/file-nope", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["message"],
        "No such File object: file-nope"
    );
    // Batches: the endpoint, the window, metadata, the input file.
    let file_id = upload(&srv, &openai_file(2, &[])).await;
    let create = |changes: Value| {
        let mut body = json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"});
        for (k, v) in changes.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (changes, param) in [
        (json!({"endpoint": "/v1/embeddings"}), "endpoint"),
        (json!({"endpoint": "/v1/nope"}), "endpoint"),
        (json!({"completion_window": "1h"}), "completion_window"),
        (json!({"input_file_id": null}), "input_file_id"),
        (
            json!({"metadata": (0..17).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            "metadata",
        ),
        (json!({"metadata": {"k": "v".repeat(513)}}), "metadata.k"),
        (json!({"metadata": {"tags": ["a"]}}), "metadata.tags"),
    ] {
        let r = call(&srv, "POST", "/v1/batches", Some(create(changes.clone()))).await;
        assert_eq!(r.status, 400, "{changes}: {}", r.text);
        assert_eq!(r.json()["error"]["param"], param, "{changes}");
    }
    let r = call(
        &srv,
        "POST",
        "/v1/batches",
        Some(create(json!({"endpoint": "/v1/embeddings"}))),
    )
    .await;
    assert!(r.text.contains("mock server serves"), "{}", r.text);
    let r = call(
        &srv,
        "POST",
        "/v1/batches",
        Some(create(json!({"input_file_id": "file-nope"}))),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = call(&srv, "GET", "/v1/batches/batch_nope", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["message"],
        "No batch found with id 'batch_nope'."
    );
    // Auth as on the chat paths.
    let r = client()
        .get(format!("http://{}/v1/batches", srv.local_addr()))
        .header("authorization", "Bearer wrong-key-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .get(format!("http://{}/v1/messages/batches", srv.local_addr()))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("anthropic-version"));
    let r = call(&srv, "DELETE", "/v1/batches", None).await;
    assert_eq!(r.status, 405);
    // Anthropic: its 400 shape for a bad custom_id; a 404 for an unknown batch.
    let mut body = anthropic_requests(2, &[], &[]);
    body["requests"][1]["custom_id"] = json!("has space");
    let r = call(&srv, "POST", "/v1/messages/batches", Some(body)).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("requests.1.custom_id"));
    let r = call(&srv, "GET", "/v1/messages/batches/msgbatch_nope", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    assert_eq!(srv.stats().batches_created, 0);
}

#[tokio::test]
async fn a_file_that_fails_validation_fails_the_batch() {
    let srv = start(fast());
    let data = [
        openai_line("a", "x"),
        openai_line("a", "y"),
        json!({"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {}})
            .to_string(),
    ]
    .join("\n");
    let file_id = upload(&srv, &data).await;
    let batch = create_openai(&srv, &file_id).await;
    assert_eq!(batch["status"], "validating");
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    let (seen, batch) = poll_until(&srv, &path, openai_ended).await;
    assert_eq!(seen, ["validating", "failed"]);
    assert!(batch["failed_at"].as_u64().is_some());
    assert_eq!(batch["in_progress_at"], Value::Null);
    assert_eq!(batch["errors"]["object"], "list");
    let errors = batch["errors"]["data"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["code"], "duplicate_custom_id");
    assert_eq!(errors[0]["line"], 2);
    assert_eq!(errors[1]["code"], "invalid_url");
    assert_eq!(errors[1]["param"], "url");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert_eq!(batch["output_file_id"], Value::Null);
    // A failed batch cannot be cancelled.
    let r = call(&srv, "POST", &format!("{path}/cancel"), None).await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json()["error"]["message"],
        "Cannot cancel a batch with status 'failed'."
    );
}

#[tokio::test]
async fn lists_are_newest_first_with_pages() {
    let srv = start(fast());
    let file_id = upload(&srv, &openai_file(1, &[])).await;
    let mut openai_ids = Vec::new();
    let mut anthropic_ids = Vec::new();
    for _ in 0..3 {
        openai_ids.push(create_openai(&srv, &file_id).await["id"].clone());
        let r = call(
            &srv,
            "POST",
            "/v1/messages/batches",
            Some(anthropic_requests(1, &[], &[])),
        )
        .await;
        anthropic_ids.push(r.json()["id"].clone());
    }
    let ids = |page: &Value| -> Vec<Value> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].clone())
            .collect()
    };
    let first = call(&srv, "GET", "/v1/batches?limit=2", None).await.json();
    assert_eq!(first["object"], "list");
    assert_eq!(ids(&first), [openai_ids[2].clone(), openai_ids[1].clone()]);
    assert_eq!(first["has_more"], true);
    assert_eq!(first["first_id"], openai_ids[2]);
    let after = first["last_id"].as_str().unwrap();
    let second = call(
        &srv,
        "GET",
        &format!("/v1/batches?limit=2&after={after}"),
        None,
    )
    .await
    .json();
    assert_eq!(ids(&second), [openai_ids[0].clone()]);
    assert_eq!(second["has_more"], false);
    let r = call(&srv, "GET", "/v1/batches?limit=0", None).await;
    assert_eq!(r.status, 400);

    let first = call(&srv, "GET", "/v1/messages/batches?limit=2", None)
        .await
        .json();
    assert_eq!(
        ids(&first),
        [anthropic_ids[2].clone(), anthropic_ids[1].clone()]
    );
    assert_eq!(first["has_more"], true);
    let last = first["last_id"].as_str().unwrap();
    let older = call(
        &srv,
        "GET",
        &format!("/v1/messages/batches?limit=2&after_id={last}"),
        None,
    )
    .await
    .json();
    assert_eq!(ids(&older), [anthropic_ids[0].clone()]);
    assert_eq!(older["has_more"], false);
    let oldest = anthropic_ids[0].as_str().unwrap();
    let newer = call(
        &srv,
        "GET",
        &format!("/v1/messages/batches?limit=1&before_id={oldest}"),
        None,
    )
    .await
    .json();
    assert_eq!(ids(&newer), [anthropic_ids[1].clone()]);
    assert_eq!(newer["has_more"], true);
}

#[tokio::test]
async fn a_cancelled_batch_keeps_what_was_done() {
    let srv = start(MockConfig {
        batch_seconds: 2.0,
        ..MockConfig::default()
    });
    let file_id = upload(&srv, &openai_file(40, &[])).await;
    let batch = create_openai(&srv, &file_id).await;
    let anthropic = call(
        &srv,
        "POST",
        "/v1/messages/batches",
        Some(anthropic_requests(40, &[], &[])),
    )
    .await
    .json();
    // About half-way through.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    let r = call(&srv, "POST", &format!("{path}/cancel"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let cancelling = r.json();
    assert_eq!(cancelling["status"], "cancelling");
    assert!(cancelling["cancelling_at"].as_u64().is_some());
    let done = cancelling["request_counts"]["completed"].as_u64().unwrap();
    assert!(0 < done && done < 40, "{cancelling}");
    // A second cancel changes nothing.
    let again = call(&srv, "POST", &format!("{path}/cancel"), None).await;
    assert_eq!(again.json()["status"], "cancelling");
    let a_path = format!("/v1/messages/batches/{}", anthropic["id"].as_str().unwrap());
    let r = call(&srv, "POST", &format!("{a_path}/cancel"), None).await;
    let canceling = r.json();
    assert_eq!(canceling["processing_status"], "canceling");
    assert!(canceling["cancel_initiated_at"].is_string());

    let (seen, batch) = poll_until(&srv, &path, openai_ended).await;
    assert_eq!(seen, ["cancelling", "cancelled"]);
    assert!(batch["cancelled_at"].as_u64().is_some());
    assert_eq!(batch["completed_at"], Value::Null);
    assert_eq!(
        batch["request_counts"],
        json!({"total": 40, "completed": done, "failed": 0})
    );
    // The docs: partial results in the output file; the requests never run are in the error
    // file as batch_cancelled (each custom_id back once).
    let output = file_lines(&srv, &batch["output_file_id"]).await;
    let errors = file_lines(&srv, &batch["error_file_id"]).await;
    assert_eq!(output.len() as u64, done);
    assert!(errors
        .iter()
        .all(|e| e["error"]["code"] == "batch_cancelled" && e["response"].is_null()));
    let mut ids = custom_ids(&output);
    ids.extend(custom_ids(&errors));
    all_once_shuffled(&ids, 40);

    let (_, ended) = poll_until(&srv, &a_path, anthropic_ended).await;
    let counts = &ended["request_counts"];
    let succeeded = counts["succeeded"].as_u64().unwrap();
    assert!(0 < succeeded && succeeded < 40, "{ended}");
    assert_eq!(counts["canceled"].as_u64().unwrap(), 40 - succeeded);
    assert_eq!(counts["processing"], 0);
    let lines = call(&srv, "GET", &format!("{a_path}/results"), None)
        .await
        .lines();
    all_once_shuffled(&custom_ids(&lines), 40);
    let canceled = lines
        .iter()
        .filter(|l| l["result"] == json!({"type": "canceled"}))
        .count() as u64;
    assert_eq!(canceled, 40 - succeeded);
    assert_eq!(srv.stats().batches_cancelled, 2);
    // Cancelling a cancelled batch again returns it as it is.
    let r = call(&srv, "POST", &format!("{a_path}/cancel"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["processing_status"], "ended");
    let r = call(&srv, "POST", &format!("{path}/cancel"), None).await;
    assert_eq!(r.json()["status"], "cancelled");
    assert_eq!(srv.stats().batches_cancelled, 2);
}

#[tokio::test]
async fn the_first_batches_expire_with_a_fraction_done() {
    let srv = start(MockConfig {
        batch_expire_first: 2,
        batch_expire_fraction: 0.5,
        ..fast()
    });
    let file_id = upload(&srv, &openai_file(10, &[])).await;
    let first = create_openai(&srv, &file_id).await;
    let anthropic = call(
        &srv,
        "POST",
        "/v1/messages/batches",
        Some(anthropic_requests(10, &[], &[])),
    )
    .await
    .json();
    let third = create_openai(&srv, &file_id).await;

    let path = format!("/v1/batches/{}", first["id"].as_str().unwrap());
    let (seen, batch) = poll_until(&srv, &path, openai_ended).await;
    assert_eq!(seen.last().unwrap(), "expired");
    assert!(batch["expired_at"].as_u64().is_some());
    assert_eq!(batch["completed_at"], Value::Null);
    assert_eq!(batch["request_counts"]["completed"], 5);
    let output = file_lines(&srv, &batch["output_file_id"]).await;
    let errors = file_lines(&srv, &batch["error_file_id"]).await;
    assert_eq!((output.len(), errors.len()), (5, 5));
    for e in &errors {
        assert_eq!(e["response"], Value::Null);
        assert_eq!(e["error"]["code"], "batch_expired");
        assert_eq!(
            e["error"]["message"],
            "This request could not be executed before the completion window expired."
        );
    }
    let mut ids = custom_ids(&output);
    ids.extend(custom_ids(&errors));
    all_once_shuffled(&ids, 10);

    let a_path = format!("/v1/messages/batches/{}", anthropic["id"].as_str().unwrap());
    let (_, ended) = poll_until(&srv, &a_path, anthropic_ended).await;
    assert_eq!(
        ended["request_counts"],
        json!({"processing": 0, "succeeded": 5, "errored": 0, "canceled": 0, "expired": 5})
    );
    let lines = call(&srv, "GET", &format!("{a_path}/results"), None)
        .await
        .lines();
    let expired = lines
        .iter()
        .filter(|l| l["result"] == json!({"type": "expired"}))
        .count();
    assert_eq!(expired, 5);

    // The third batch is past the first two: it completes.
    let path = format!("/v1/batches/{}", third["id"].as_str().unwrap());
    let (_, batch) = poll_until(&srv, &path, openai_ended).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["completed"], 10);
}

/// Sends a create with a client timeout of `timeout_ms`; whether an answer came.
async fn create_with_timeout(srv: &MockServer, path: &str, body: Value, timeout_ms: u64) -> bool {
    let url = format!("http://{}{path}", srv.local_addr());
    let req = client()
        .post(url)
        .timeout(Duration::from_millis(timeout_ms))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_string());
    req.send().await.is_ok()
}

/// An OpenAI batch (`openai`) and an Anthropic one created by clients that give up after
/// `timeout_ms`, one after the other: whether either was answered.
async fn create_both_with_timeout(srv: &MockServer, openai: &Value, timeout_ms: u64) -> bool {
    let answered = create_with_timeout(srv, "/v1/batches", openai.clone(), timeout_ms).await;
    let anthropic = anthropic_requests(2, &[], &[]);
    create_with_timeout(srv, "/v1/messages/batches", anthropic, timeout_ms).await || answered
}

#[tokio::test]
async fn a_client_gone_during_the_first_delay_created_nothing() {
    let srv = start(MockConfig {
        batch_delay_ms: 300,
        ..fast()
    });
    let (content_type, body) = multipart(
        &[("purpose", "batch")],
        Some(("a.jsonl", openai_file(2, &[]).as_bytes())),
    );
    let started = std::time::Instant::now();
    let r = client()
        .post(format!("http://{}/v1/files", srv.local_addr()))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Two waits around the work.
    assert!(started.elapsed() >= Duration::from_millis(600));
    let file: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let file_id = file["id"].as_str().unwrap().to_string();
    let openai = json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
        "completion_window": "24h"});
    // Killed during the first wait: hyper drops the handler with the connection, nothing is
    // created.
    assert!(!create_both_with_timeout(&srv, &openai, 100).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(srv.stats().batches_created, 0);
    let list = call(&srv, "GET", "/v1/batches", None).await.json();
    assert_eq!(list["data"], json!([]));
    // Killed during the second wait: the batch exists, the client never heard of it.
    assert!(!create_both_with_timeout(&srv, &openai, 450).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(srv.stats().batches_created, 2);
    let list = call(&srv, "GET", "/v1/batches", None).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let list = call(&srv, "GET", "/v1/messages/batches", None).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // A download waits once.
    let started = std::time::Instant::now();
    let r = call(&srv, "GET", &format!("/v1/files/{file_id}/content"), None).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn batch_requests_draw_faults_as_server_errors() {
    let srv = start(MockConfig {
        fault_rate: 1.0,
        faults: vec!["429".into(), "reset".into(), "503".into()],
        ..fast()
    });
    let file_id = upload(&srv, &openai_file(12, &[])).await;
    let batch = create_openai(&srv, &file_id).await;
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    let (_, batch) = poll_until(&srv, &path, openai_ended).await;
    assert_eq!(batch["output_file_id"], Value::Null);
    let errors = file_lines(&srv, &batch["error_file_id"]).await;
    assert_eq!(errors.len(), 12);
    for e in &errors {
        let status = e["response"]["status_code"].as_u64().unwrap();
        assert!(status == 500 || status == 503, "{e}");
        assert_eq!(e["response"]["body"]["error"]["type"], "server_error");
    }
}
