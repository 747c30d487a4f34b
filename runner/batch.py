"""Running one batch: preflight, feeding the native executor, joining results to their input
rows, checkpointing, and the final output."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from runner import __version__, endpoint, observability
from runner.checkpoint import OutputError, RunDir
from runner.dataset import iter_chunks, resolve_inputs, scan
from runner.errors import InputError, RunnerError
from runner.pricing import cost_column
from runner.progress import Progress, summary
from runner.render import RequestSpec, Renderer, plan
from runner.schema import META_CONFIG, META_SUMMARY, RESULT_FIELDS, TS, input_column_name

#: How long one poll of the executor waits; also the pace of progress and checkpoints.
POLL_SECONDS = 0.2

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class RunOptions:
    """Everything `prompt-runner run` takes."""

    input: str
    output: Path
    provider: str
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    concurrency: int = 32
    rpm: int | None = None
    tpm: int | None = None
    max_retries: int = 6
    timeout: float = 60.0
    stream: bool = False
    template: str | None = None
    system: str | None = None
    id_column: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    limit: int | None = None
    dry_run: bool = False
    mock_config: str = "{}"
    # observability: serve Prometheus metrics on this port while the run goes on
    metrics_port: int | None = None

    def check(self) -> None:
        for name in ("concurrency", "rpm", "tpm", "limit", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
        if self.max_retries < 0:
            raise InputError(f"--max-retries: must be 0 or more, got {self.max_retries}")
        if self.timeout <= 0:
            raise InputError(f"--timeout: must be a positive number of seconds, got {self.timeout}")
        if self.provider != "mock" and not self.model:
            raise InputError(f"--model is required with --provider {self.provider}")


class InFlight:
    """Input chunks whose rows are still out, so each result can be joined to its input row."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[list[Any]] = []  # [start, table, ids, rows still out]

    def add(self, start: int, table: pa.Table, ids: pa.Array, outstanding: int) -> None:
        if outstanding:
            with self._lock:
                self._chunks.append([start, table, ids, outstanding])

    def join(self, results: pa.Table) -> list[tuple[pa.Table, pa.Array, pa.Table]]:
        """Splits `results` by input chunk: (input rows, their ids, their results)."""
        rows = results.column("_row")
        pieces = []
        with self._lock:
            for entry in self._chunks:
                start, table, ids, _ = entry
                mask = pc.and_(pc.greater_equal(rows, start), pc.less(rows, start + table.num_rows))
                mine = results.filter(mask)
                if not mine.num_rows:
                    continue
                index = pc.subtract(mine.column("_row"), start)
                pieces.append((table.take(index), ids.take(index), mine))
                entry[3] -= mine.num_rows
            self._chunks = [e for e in self._chunks if e[3] > 0]
        return pieces


class Batch:
    """One `run`: owns the executor, the feeder thread and the run directory."""

    def __init__(self, opts: RunOptions, err: TextIO = sys.stderr) -> None:
        opts.check()
        self.opts = opts
        self.err = err
        self.paths = resolve_inputs(opts.input)
        self.spec = RequestSpec(template=opts.template, system=opts.system, id_column=opts.id_column or self._default_id())
        self.model = opts.model or endpoint.MOCK_MODEL
        self.run_id = uuid.uuid4().hex[:12]
        self.inflight = InFlight()
        self.feed_error: BaseException | None = None
        self._renderers: dict[Path, Renderer] = {}

    # -- preflight -------------------------------------------------------------------------

    def _default_id(self) -> str | None:
        """An input column named `id` is the id column unless another one is named."""
        first = next(iter_chunks(self.paths[:1], chunk_rows=1), None)
        return "id" if first is not None and "id" in first.table.column_names else None

    def _renderer(self, chunk_path: Path, table: pa.Table) -> Renderer:
        # Planned once per file from its first chunk, as `scan` checked it.
        if chunk_path not in self._renderers:
            self._renderers[chunk_path] = plan(table.column_names, self.spec, str(chunk_path))
        return self._renderers[chunk_path]

    def config_record(self, ep: endpoint.Endpoint) -> dict[str, Any]:
        """The run's configuration as saved on disk and in the output metadata (no key)."""
        o = self.opts
        return {
            "run_id": self.run_id,
            "version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "input": [str(p) for p in self.paths],
            "provider": o.provider,
            "model": self.model,
            "api_base": None if o.provider == "mock" else ep.api_base,
            "request": {
                "template": o.template,
                "system": o.system,
                "id_column": o.id_column,
                "temperature": o.temperature,
                "max_tokens": o.max_tokens,
                "stream": o.stream,
            },
            "limits": {
                "concurrency": o.concurrency,
                "rpm": o.rpm,
                "tpm": o.tpm,
                "max_retries": o.max_retries,
                "timeout": o.timeout,
                "limit": o.limit,
            },
        }

    def dry_run(self, rows: int) -> int:
        first = next(iter_chunks(self.paths, chunk_rows=1), None)
        print(f"{rows} rows would be sent to {self.opts.provider}/{self.model}; nothing was sent.", file=self.err)
        if first is not None and first.table.num_rows:
            payload = self._renderer(first.path, first.table).render(first.table.slice(0, 1))[0]
            request = {"model": self.model, "messages": json.loads(payload)}
            if self.opts.system:
                request["system"] = self.opts.system
            print("first request:", json.dumps(request, ensure_ascii=False, indent=2), file=self.err)
        return EXIT_OK

    # -- run -------------------------------------------------------------------------------

    def run(self) -> int:
        summary_scan = scan(self.paths, self.spec)
        total = summary_scan.rows if self.opts.limit is None else min(summary_scan.rows, self.opts.limit)
        if self.opts.dry_run:
            return self.dry_run(total)
        run_dir = RunDir(self.opts.output)
        try:
            self.opts.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{self.opts.output}: cannot create its directory: {err.strerror}") from None
        ep = endpoint.resolve(self.opts.provider, self.opts.api_base, self.opts.api_key_env, self.opts.mock_config)
        try:
            return self._run(ep, run_dir, total)
        finally:
            ep.close()

    def _native_config(self, ep: endpoint.Endpoint) -> str:
        o = self.opts
        return json.dumps(
            {
                "provider": ep.wire,
                "api_base": ep.api_base,
                "api_key": ep.api_key,
                "model": self.model,
                "temperature": o.temperature,
                "max_tokens": o.max_tokens,
                "stream": o.stream,
                "system": o.system,
                "concurrency": o.concurrency,
                "rpm": o.rpm,
                "tpm": o.tpm,
                "max_retries": o.max_retries,
                "timeout": o.timeout,
            }
        )

    def _run(self, ep: endpoint.Endpoint, run_dir: RunDir, total: int) -> int:
        from runner._native import Executor

        done_before = run_dir.ok_rows()
        run_dir.prepare(self.config_record(ep))
        to_send = total - sum(1 for r in done_before if r < total)
        if done_before:
            print(f"resuming: {total - to_send} of {total} rows are already ok and will not be sent again", file=self.err)
        executor = Executor(self._native_config(ep))
        metrics_server = observability.start_metrics(self.opts.metrics_port, executor, self.err)  # observability
        feeder = threading.Thread(target=self._feed, args=(executor, done_before, total), daemon=True)
        started = time.monotonic()
        interrupted = False
        feeder.start()
        with Progress(total=to_send, label=f"{self.opts.provider}/{self.model}", stream=self.err) as progress, stop_signals() as stop:
            while (chunk := executor.poll(POLL_SECONDS)) is not None:
                if stop.is_set() and not interrupted:
                    interrupted = True
                    executor.cancel()
                if chunk:
                    self._collect(chunk, run_dir)
                if run_dir.flush_due():
                    run_dir.flush()
                s = executor.stats()
                progress.update(s["done"], s["ok"], s["failed"], s["retrying"], s["prompt_tokens"], s["completion_tokens"])
        run_dir.flush()
        observability.stop_metrics(metrics_server)  # observability
        feeder.join(timeout=5)
        elapsed = time.monotonic() - started
        if self.feed_error is not None:
            raise self.feed_error
        if interrupted:
            print(f"\ninterrupted: finished rows are saved in {run_dir.path}", file=self.err)
            print(f"resume with: {resume_command()}", file=self.err)
            return EXIT_INTERRUPTED
        fatal = executor.fatal_error()
        stats = {**executor.stats(), **observability.run_metrics(executor)}  # observability
        table = run_dir.compact(self._metadata(ep, stats, elapsed))
        print(summary(table, elapsed), file=self.err)
        if fatal:
            print(f"error: run stopped: {fatal}", file=self.err)
            return EXIT_FAILED
        failed = pc.sum(pc.equal(table.column("status"), "error")).as_py() if table.num_rows else 0
        print(f"wrote {table.num_rows} rows to {self.opts.output}", file=self.err)
        return EXIT_FAILED if failed or table.num_rows < total else EXIT_OK

    def _metadata(self, ep: endpoint.Endpoint, stats: dict[str, Any], elapsed: float) -> dict[bytes, bytes]:
        record = self.config_record(ep)
        metrics = {**stats, "elapsed_s": round(elapsed, 3)}
        return {META_CONFIG: json.dumps(record).encode(), META_SUMMARY: json.dumps(metrics).encode()}

    def _feed(self, executor: Any, skip: set[int], total: int) -> None:
        """Feeder thread: reads, renders and submits rows in chunks; the queue bounds memory."""
        from runner._native import RunStopped

        position = 0
        try:
            for chunk in iter_chunks(self.paths):
                if position >= total:
                    break
                table = chunk.table.slice(0, total - position)
                renderer = self._renderer(chunk.path, table)
                ids = pa.array(renderer.ids(table, position, chunk), pa.string())
                payloads = renderer.render(table, chunk)
                rows = [position + i for i in range(table.num_rows) if position + i not in skip]
                if len(rows) < table.num_rows:
                    payloads = [payloads[r - position] for r in rows]
                self.inflight.add(position, table, ids, len(rows))
                if rows:
                    executor.submit(rows, payloads)
                position += table.num_rows
        except RunStopped:
            pass
        except BaseException as err:  # surfaced on the main thread after the run stops
            self.feed_error = err
            executor.cancel()
        finally:
            executor.close_input()

    def _collect(self, chunk: dict[str, list[Any]], run_dir: RunDir) -> None:
        results = result_table(chunk)
        for inputs, ids, res in self.inflight.join(results):
            run_dir.append(self._output_rows(inputs, ids, res))

    def _output_rows(self, inputs: pa.Table, ids: pa.Array, res: pa.Table) -> pa.Table:
        n = res.num_rows
        columns: dict[str, Any] = {"_row": res.column("_row"), "id": ids}
        for name in inputs.column_names:
            columns[input_column_name(name)] = inputs.column(name)
        columns["model"] = pa.array([self.model] * n, pa.string())
        columns["provider"] = pa.array([self.opts.provider] * n, pa.string())
        for f in RESULT_FIELDS:
            columns[f.name] = res.column(f.name)
        columns["cost_usd"] = cost_column(self.model, res.column("prompt_tokens"), res.column("completion_tokens"))
        columns["request_hash"] = res.column("request_hash")
        columns["run_id"] = pa.array([self.run_id] * n, pa.string())
        return pa.table(columns)


def result_table(chunk: dict[str, list[Any]]) -> pa.Table:
    """The executor's column lists as a typed Arrow table (`_row` + the result fields)."""
    arrays = {"_row": pa.array(chunk["row"], pa.int64())}
    for f in RESULT_FIELDS:
        values = chunk[f.name]
        if f.type == TS:
            arrays[f.name] = pa.array(values, pa.int64()).cast(TS)
        else:
            arrays[f.name] = pa.array(values, f.type)
    arrays["request_hash"] = pa.array(chunk["request_hash"], pa.string())
    return pa.table(arrays)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event instead of raising, so no result in hand is ever dropped
    half-processed; the run loop sees the event and stops dispatching."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_command() -> str:
    """The command line that continues this run (the same command: ok rows are skipped)."""
    return shlex.join(["prompt-runner", *sys.argv[1:]])


__all__ = ["Batch", "RunOptions", "RunnerError", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]
