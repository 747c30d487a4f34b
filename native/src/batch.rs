//! Results as an Arrow record batch: `_row`, the result columns of the output (their names,
//! types and order; ARCHITECTURE.md "Output schema"), then `request_hash`. This is where the
//! result schema is defined, once; Python reads it through `runner._native.result_schema()`.
//! A poll's rows cross to Python in one batch through the Arrow C data interface, with no
//! Python object per value.

use crate::error::ErrorType;
use crate::row::RowResult;
use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, OnceLock};

/// The batch's schema; every column may hold nulls.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            let fields = [
                ("_row", DataType::Int64),
                ("status", DataType::Utf8),
                ("output", DataType::Utf8),
                ("refusal", DataType::Utf8),
                ("tool_calls", DataType::Utf8),
                ("choices", choices_type()),
                ("logprobs", DataType::Utf8),
                ("finish_reason", DataType::Utf8),
                ("prompt_tokens", DataType::Int64),
                ("completion_tokens", DataType::Int64),
                ("reasoning_tokens", DataType::Int64),
                ("cached_prompt_tokens", DataType::Int64),
                ("cache_write_tokens", DataType::Int64),
                ("latency_ms", DataType::Float64),
                ("ttft_ms", DataType::Float64),
                ("attempts", DataType::Int32),
                ("http_status", DataType::Int32),
                ("error_type", DataType::Utf8),
                ("error", DataType::Utf8),
                ("started_at", ts.clone()),
                ("finished_at", ts),
                ("raw", DataType::Utf8),
                ("request_hash", DataType::Utf8),
            ];
            Arc::new(Schema::new(
                fields
                    .into_iter()
                    .map(|(name, ty)| Field::new(name, ty, true))
                    .collect::<Vec<_>>(),
            ))
        })
        .clone()
}

/// `choices`: list<string> (Arrow `List(Utf8)`, items named "item" and nullable, as
/// arrow's `ListBuilder` makes them and pyarrow's `pa.list_(pa.string())` reads them).
fn choices_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// The `choices` column: each row's choices, null when it has none.
fn choices_column(rows: &[RowResult]) -> ArrayRef {
    let items: usize = rows
        .iter()
        .filter_map(|r| r.choices.as_ref())
        .map(|c| c.iter().map(String::len).sum::<usize>())
        .sum();
    let mut builder =
        ListBuilder::with_capacity(StringBuilder::with_capacity(rows.len(), items), rows.len());
    for row in rows {
        match &row.choices {
            Some(choices) => {
                for choice in choices {
                    builder.values().append_value(choice);
                }
                builder.append(true);
            }
            None => builder.append_null(),
        }
    }
    Arc::new(builder.finish())
}

/// One record batch of `rows`, in their order.
pub fn to_batch(rows: &[RowResult]) -> Result<RecordBatch, ArrowError> {
    let text = |f: fn(&RowResult) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let int = |f: fn(&RowResult) -> Option<i64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int64Array>())
    };
    let small = |f: fn(&RowResult) -> Option<i32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int32Array>())
    };
    let float = |f: fn(&RowResult) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    let time = |f: fn(&RowResult) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let columns = vec![
        int(|r| Some(r.row as i64)),
        text(|r| Some(if r.ok { "ok" } else { "error" })),
        text(|r| r.output.as_deref()),
        text(|r| r.refusal.as_deref()),
        text(|r| r.tool_calls.as_deref()),
        choices_column(rows),
        text(|r| r.logprobs.as_deref()),
        text(|r| r.finish_reason.as_deref()),
        int(|r| r.prompt_tokens.map(|t| t as i64)),
        int(|r| r.completion_tokens.map(|t| t as i64)),
        int(|r| r.reasoning_tokens.map(|t| t as i64)),
        int(|r| r.cached_prompt_tokens.map(|t| t as i64)),
        int(|r| r.cache_write_tokens.map(|t| t as i64)),
        float(|r| Some(r.latency_ms)),
        float(|r| r.ttft_ms),
        small(|r| Some(r.attempts as i32)),
        small(|r| r.http_status.map(i32::from)),
        text(|r| r.error_type.map(ErrorType::as_str)),
        text(|r| r.error.as_deref()),
        time(|r| r.started_at_us),
        time(|r| r.finished_at_us),
        text(|r| r.raw.as_deref()),
        text(|r| Some(r.request_hash.as_str())),
    ];
    RecordBatch::try_new(schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    fn result(row: u64, ok: bool) -> RowResult {
        RowResult {
            row,
            ok,
            output: ok.then(|| format!("Echo: ζ {row}")),
            finish_reason: ok.then(|| "stop".to_string()),
            prompt_tokens: ok.then_some(3),
            completion_tokens: ok.then_some(4),
            latency_ms: 1.5,
            ttft_ms: None,
            attempts: 2,
            http_status: Some(if ok { 200 } else { 400 }),
            error_type: (!ok).then_some(ErrorType::BadRequest),
            error: (!ok).then(|| "HTTP 400: no".to_string()),
            started_at_us: 1_700_000_000_000_000,
            finished_at_us: 1_700_000_000_001_500,
            request_hash: format!("h{row}"),
            ..RowResult::default()
        }
    }

    #[test]
    fn a_batch_holds_every_field_with_nulls_where_absent() {
        let batch = to_batch(&[result(7, true), result(3, false)]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), schema());
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let rows = col("_row");
        let rows = rows.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(rows.values(), &[7, 3]);
        let status = col("status");
        let status = status.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((status.value(0), status.value(1)), ("ok", "error"));
        let output = col("output");
        let output = output.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(output.value(0), "Echo: ζ 7");
        assert!(output.is_null(1));
        let http = col("http_status");
        let http = http.as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(http.values(), &[200, 400]);
        assert_eq!(col("ttft_ms").null_count(), 2);
        assert_eq!(col("error_type").null_count(), 1);
        assert_eq!(col("prompt_tokens").null_count(), 1);
    }

    #[test]
    fn an_empty_poll_is_an_empty_batch() {
        let batch = to_batch(&[]).unwrap();
        assert_eq!((batch.num_rows(), batch.num_columns()), (0, 23));
    }

    #[test]
    fn the_new_columns_sit_where_the_output_schema_says() {
        let names: Vec<String> = schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            names,
            [
                "_row",
                "status",
                "output",
                "refusal",
                "tool_calls",
                "choices",
                "logprobs",
                "finish_reason",
                "prompt_tokens",
                "completion_tokens",
                "reasoning_tokens",
                "cached_prompt_tokens",
                "cache_write_tokens",
                "latency_ms",
                "ttft_ms",
                "attempts",
                "http_status",
                "error_type",
                "error",
                "started_at",
                "finished_at",
                "raw",
                "request_hash",
            ]
        );
        let mut row = result(1, true);
        row.refusal = Some("I can't help with that.".into());
        row.tool_calls = Some(r#"[{"id":"call_1"}]"#.into());
        row.reasoning_tokens = Some(64);
        row.cached_prompt_tokens = Some(1024);
        row.cache_write_tokens = Some(12);
        row.raw = Some("{}".into());
        let batch = to_batch(&[row, result(2, true)]).unwrap();
        let text = |name: &str| {
            let col = batch.column_by_name(name).unwrap();
            let col = col.as_any().downcast_ref::<StringArray>().unwrap();
            (col.value(0).to_string(), col.is_null(1))
        };
        assert_eq!(text("refusal"), ("I can't help with that.".into(), true));
        assert_eq!(text("tool_calls"), (r#"[{"id":"call_1"}]"#.into(), true));
        assert_eq!(text("raw"), ("{}".into(), true));
        let int = |name: &str| {
            let col = batch.column_by_name(name).unwrap();
            let col = col.as_any().downcast_ref::<Int64Array>().unwrap();
            (col.value(0), col.is_null(1))
        };
        assert_eq!(int("reasoning_tokens"), (64, true));
        assert_eq!(int("cached_prompt_tokens"), (1024, true));
        assert_eq!(int("cache_write_tokens"), (12, true));
    }

    #[test]
    fn choices_are_a_list_of_strings_and_logprobs_json_text() {
        let field = schema().field_with_name("choices").unwrap().clone();
        assert_eq!(field.data_type(), &choices_type());
        assert!(field.is_nullable());
        let at = |name: &str| schema().index_of(name).unwrap();
        assert_eq!(at("choices"), at("tool_calls") + 1);
        assert_eq!(at("logprobs"), at("tool_calls") + 2);
        let mut many = result(1, true);
        many.choices = Some(vec!["Echo: a".into(), String::new(), "é 3".into()]);
        many.logprobs = Some(r#"{"content":[]}"#.into());
        let mut two = result(3, true);
        two.choices = Some(vec!["x".into(), "y".into()]);
        let batch = to_batch(&[many, result(2, true), two]).unwrap();
        let col = batch.column_by_name("choices").unwrap();
        let list = col
            .as_any()
            .downcast_ref::<arrow_array::ListArray>()
            .unwrap();
        let texts = |i: usize| -> Vec<String> {
            let values = list.value(i);
            let values = values.as_any().downcast_ref::<StringArray>().unwrap();
            values.iter().map(|v| v.unwrap().to_string()).collect()
        };
        assert_eq!(texts(0), ["Echo: a", "", "é 3"]);
        assert!(list.is_null(1));
        assert_eq!(texts(2), ["x", "y"]);
        let logprobs = batch.column_by_name("logprobs").unwrap();
        let logprobs = logprobs.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(logprobs.value(0), r#"{"content":[]}"#);
        assert_eq!(logprobs.null_count(), 2);
    }
}
