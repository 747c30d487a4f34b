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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from runner import __version__, endpoint
from runner.checkpoint import FLUSH_ROWS, OutputError, RunDir, file_digest, oserror_text
from runner.dataset import iter_chunks, resolve_inputs, scan
from runner.errors import InputError, RunnerError
from runner.options import RunOptions
from runner.pricing import cost_column
from runner.progress import Progress, summary
from runner.render import RequestSpec, Renderer, plan
from runner.schema import META_CONFIG, META_SUMMARY, RESULT_FIELDS, TS, input_column_name

#: How long one poll of the executor waits; also the pace of progress and checkpoints.
POLL_SECONDS = 0.2

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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

    def request_fingerprint(self) -> dict[str, Any]:
        """Everything that changes what is sent for a row; a saved run must match it."""
        o = self.opts
        return {
            "provider": o.provider,
            "model": self.model,
            "api_base": None if o.provider == "mock" else (o.api_base or None),
            "template": o.template,
            "system": o.system,
            "id_column": self.spec.id_column,
            "temperature": o.temperature,
            "max_tokens": o.max_tokens,
        }

    def record(self, total: int, inputs: list[dict[str, Any]], saved: dict[str, Any] | None) -> dict[str, Any]:
        """run.json: the options, the fingerprints and the row count (never a key)."""
        return {
            "run_id": self.run_id,
            "version": __version__,
            "created_at": (saved or {}).get("created_at") or datetime.now(timezone.utc).isoformat(),
            "updated_at": datetime.now(timezone.utc).isoformat(),
            "rows": total,
            "options": self.opts.saved(),
            "fingerprint": {"input": inputs, "request": self.request_fingerprint()},
        }

    def _check_same_run(self, saved: dict[str, Any], inputs: list[dict[str, Any]]) -> None:
        """Refuses to mix two different runs in one output."""
        old = saved.get("fingerprint", {})
        changed = [k for k, v in self.request_fingerprint().items() if old.get("request", {}).get(k) != v]
        same_input = [(f["size"], f["sha256"]) for f in old.get("input", [])] == [(f["size"], f["sha256"]) for f in inputs]
        if not same_input:
            changed.insert(0, "input")
        if changed:
            raise InputError(
                f"{self.opts.output}: the saved run differs in {', '.join(changed)}; "
                "pass --restart to start over, or write to another output"
            )

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
            raise OutputError(f"{self.opts.output}: cannot create its directory: {oserror_text(err)}") from None
        inputs = [file_digest(p) for p in self.paths]
        saved = run_dir.record()
        if self.opts.restart:
            if (pid := run_dir.holder()) is not None:
                raise InputError(f"{self.opts.output}: another prompt-runner (pid {pid}) is running on it")
            run_dir.remove()
            saved = None
        elif saved is not None:
            self._check_same_run(saved, inputs)
            self.run_id = saved.get("run_id", self.run_id)
        ep = endpoint.resolve(self.opts.provider, self.opts.api_base, self.opts.api_key_env, self.opts.mock_config)
        try:
            run_dir.prepare()
            try:
                run_dir.write_record(self.record(total, inputs, saved))
                return self._run(ep, run_dir, total)
            finally:
                run_dir.release()
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

        # Write a burst of answers at once, and never hold back more than 0.5 % of the rows.
        run_dir.flush_rows = min(FLUSH_ROWS, max(self.opts.concurrency, total // 200))
        settled = run_dir.settled_rows(self.opts.retry_failed)
        to_send = total - sum(1 for r in settled if r < total)
        if settled:
            print(f"resuming: {total - to_send} of {total} rows are settled and will not be sent again", file=self.err)
        executor = Executor(self._native_config(ep))
        feeder = threading.Thread(target=self._feed, args=(executor, settled, total), daemon=True)
        started = time.monotonic()
        stop = Shutdown(executor, self.opts.grace_period, self.err)
        write_error: OutputError | None = None
        feeder.start()
        with Progress(total=to_send, label=f"{self.opts.provider}/{self.model}", stream=self.err) as progress, stop_signals(stop):
            while (chunk := executor.poll(run_dir.seconds_to_flush(POLL_SECONDS))) is not None:
                stop.check()
                if write_error is not None:
                    continue  # stopping: nothing more can be saved
                try:
                    if chunk:
                        self._collect(chunk, run_dir)
                    if run_dir.flush_due():
                        run_dir.flush()
                except OutputError as err:
                    write_error = err
                    executor.cancel()
                s = executor.stats()
                progress.update(s["done"], s["ok"], s["failed"], s["retrying"], s["prompt_tokens"], s["completion_tokens"])
        if write_error is None:
            try:
                run_dir.flush()
            except OutputError as err:
                write_error = err
        feeder.join(timeout=5)
        elapsed = time.monotonic() - started
        if self.feed_error is not None:
            raise self.feed_error
        if write_error is not None:
            print(f"error: {write_error}", file=self.err)
            print(f"the run state is consistent; once there is room, resume with: {resume_command(self.opts.output)}", file=self.err)
            return EXIT_FAILED
        if stop.requested:
            done = len(run_dir.settled_rows(self.opts.retry_failed))
            print(f"\ninterrupted: {done} of {total} rows are saved in {run_dir.path}", file=self.err)
            print(f"resume with: {resume_command(self.opts.output)}", file=self.err)
            return EXIT_INTERRUPTED
        fatal = executor.fatal_error()
        stats = executor.stats()
        table = run_dir.compact(self._metadata(run_dir, stats, elapsed))
        print(summary(table, elapsed), file=self.err)
        if fatal:
            print(f"error: run stopped: {fatal}", file=self.err)
            return EXIT_FAILED
        failed = pc.sum(pc.equal(table.column("status"), "error")).as_py() if table.num_rows else 0
        print(f"wrote {table.num_rows} rows to {self.opts.output}", file=self.err)
        return EXIT_FAILED if failed or table.num_rows < total else EXIT_OK

    def _metadata(self, run_dir: RunDir, stats: dict[str, int], elapsed: float) -> dict[bytes, bytes]:
        record = run_dir.record() or {}
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


class Shutdown:
    """Graceful stop on SIGINT/SIGTERM: the first stops dispatching and lets requests on the
    wire finish for up to `grace` seconds; a second one (or the end of the grace) abandons them."""

    def __init__(self, executor: Any, grace: float, err: TextIO) -> None:
        self.executor = executor
        self.grace = grace
        self.err = err
        self.signals = 0
        self.requested = False
        self._deadline: float | None = None
        self._abandoned = False

    def signal(self) -> None:
        self.signals += 1

    def check(self) -> None:
        """Called from the run loop: acts on signals that arrived."""
        if self.signals and not self.requested:
            self.requested = True
            self._deadline = time.monotonic() + self.grace
            self.executor.drain()
            in_flight = self.executor.stats()["in_flight"]
            print(
                f"\nstopping: waiting up to {self.grace:g}s for {in_flight} requests in flight "
                "(press Ctrl-C again to abandon them)",
                file=self.err,
            )
        if self.requested and not self._abandoned:
            if self.signals > 1 or (self._deadline is not None and time.monotonic() >= self._deadline):
                self._abandoned = True
                self.executor.cancel()


@contextlib.contextmanager
def stop_signals(stop: Shutdown) -> Iterator[None]:
    """SIGINT/SIGTERM are counted instead of raising, so no result in hand is ever dropped
    half-processed; the run loop acts on them (signals are only caught on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        stop.signal()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_command(output: Path) -> str:
    """The command that continues this run from its saved state."""
    return shlex.join(["prompt-runner", "resume", str(output)])


__all__ = ["Batch", "RunOptions", "RunnerError", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]
