//! OpenAI's Files API, as far as batches need it: upload (multipart/form-data), the file
//! object, its content. Batch output and error files are stored here too.

use super::{delay, openai_error, unix_now, Answer, Shared, Store};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyStream, Limited};
use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};

/// Upload bodies above this are refused (413); batch input files may be 200 MB.
const MAX_UPLOAD: usize = 512 << 20;
/// The purposes OpenAI takes.
const PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// A stored file.
#[derive(Debug, Clone)]
pub(super) struct File {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub created_at: u64,
    pub bytes: Bytes,
}

impl File {
    pub(super) fn new(id: String, filename: String, purpose: &str, bytes: Bytes) -> Self {
        File {
            id,
            filename,
            purpose: purpose.to_string(),
            created_at: unix_now() as u64,
            bytes,
        }
    }

    pub(super) fn object(&self) -> Value {
        json!({"id": self.id, "object": "file", "bytes": self.bytes.len(),
            "created_at": self.created_at, "filename": self.filename, "purpose": self.purpose,
            "status": "processed", "expires_at": null, "status_details": null})
    }
}

/// The 404 for an unknown file id.
pub(super) fn not_found(id: &str) -> Answer {
    openai_error(404, &format!("No such File object: {id}"), Some("id"), None)
}

/// `POST /v1/files`: `purpose` and `file` fields. Waits `batch_delay_ms` before storing the
/// file and again after.
pub(super) async fn upload(shared: &Shared, store: &Store, req: Request<Incoming>) -> Answer {
    let boundary = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok());
    let Some(boundary) = boundary else {
        return openai_error(
            400,
            "Invalid Content-Type header (expected multipart/form-data with a boundary).",
            None,
            None,
        );
    };
    let body =
        BodyStream::new(Limited::new(req.into_body(), MAX_UPLOAD)).filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(err) => Some(Err(err)),
            }
        });
    let mut multipart = multer::Multipart::new(body, boundary);
    let (mut purpose, mut file) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => return multipart_error(&err),
        };
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let data = match field.bytes().await {
            Ok(data) => data,
            Err(err) => return multipart_error(&err),
        };
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(&data).trim().to_string()),
            "file" => file = Some((filename.unwrap_or_else(|| "file".into()), data)),
            _ => {}
        }
    }
    let Some(purpose) = purpose else {
        return missing("purpose");
    };
    let Some((filename, data)) = file else {
        return missing("file");
    };
    if !PURPOSES.contains(&purpose.as_str()) {
        let message = format!(
            "Invalid value for 'purpose': '{purpose}'. Supported values are: 'assistants', \
             'batch', 'fine-tune', 'vision', 'user_data', and 'evals'."
        );
        return openai_error(400, &message, Some("purpose"), Some("invalid_value"));
    }
    if purpose == "batch" && !first_line_is_json(&data) {
        return openai_error(
            400,
            "Invalid file format for Batch API. Must be .jsonl",
            None,
            None,
        );
    }
    delay(shared).await;
    let file = File::new(
        format!("file-{}", shared.next_id()),
        filename,
        &purpose,
        data,
    );
    let object = file.object();
    store.lock().files.insert(file.id.clone(), file);
    shared.stats.file_uploaded();
    delay(shared).await;
    Answer::ok(&object)
}

fn missing(param: &str) -> Answer {
    openai_error(
        400,
        &format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// A body over the limit is a 413; any other unreadable multipart body a 400.
fn multipart_error(err: &multer::Error) -> Answer {
    match err {
        multer::Error::StreamReadFailed(_) | multer::Error::StreamSizeExceeded { .. } => {
            openai_error(413, "The request body is too large.", None, None)
        }
        other => openai_error(
            400,
            &format!("Could not parse multipart form: {other}"),
            None,
            None,
        ),
    }
}

/// OpenAI refuses a batch file that is empty or whose first line is not JSON at upload; the
/// rest of the file is checked when a batch validates it.
fn first_line_is_json(data: &[u8]) -> bool {
    let first = data
        .split(|b| *b == b'\n')
        .find(|line| !line.trim_ascii().is_empty());
    first.is_some_and(|line| serde_json::from_slice::<Value>(line).is_ok())
}

/// `GET /v1/files/{id}`
pub(super) fn get(store: &Store, id: &str) -> Answer {
    match store.lock().files.get(id) {
        Some(file) => Answer::ok(&file.object()),
        None => not_found(id),
    }
}

/// `GET /v1/files/{id}/content`: the bytes (a batch's output file exists once the batch has
/// ended and was looked at).
pub(super) fn content(store: &Store, id: &str) -> Answer {
    match store.lock().files.get(id) {
        Some(file) => Answer {
            status: 200,
            body: file.bytes.clone(),
            content_type: "application/octet-stream",
        },
        None => not_found(id),
    }
}
