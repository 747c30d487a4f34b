"""Reading the input (`dataset.py`: JSONL, Parquet, globs, in chunks) and turning each row
into the messages to send (`render.py`: templates, message columns, Batch API lines)."""
