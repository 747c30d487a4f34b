"""Logs and run metrics for the CLI: the native log subscriber, the Prometheus endpoint, and the
metrics kept in the output's summary metadata and shown by `status`."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from runner import _native
from runner.errors import InputError

__all__ = ["format_metrics", "run_metrics", "setup_logging", "start_metrics", "stop_metrics"]

LOG_FORMATS = ("text", "json")


def setup_logging(level: str | None, log_format: str = "text") -> bool:
    """Installs the native log subscriber (stderr) when a level or JSON logs are asked for.

    ``level``: error, warning, info, debug, trace, or directives (``prompt_runner=debug``);
    JSON logs without a level log at ``info``. Returns whether a subscriber was installed now.
    """
    if log_format not in LOG_FORMATS:
        raise InputError(f"--log-format: expected text or json, got {log_format!r}")
    if level is None and log_format == "text":
        return False
    try:
        return _native.init_logging(level or "info", log_format == "json")
    except _native.ConfigError as err:
        raise InputError(f"--log-level: {err}") from None


def start_metrics(
    port: int | None, runs: Sequence[tuple[_native.Executor, str, str]], err: TextIO = sys.stderr
) -> _native.MetricsServer | None:
    """Serves the metrics of ``runs`` (executor, provider, model) at
    ``http://127.0.0.1:PORT/metrics`` (None: no server). Each sample is labelled with its
    run's provider and model; a matrix that repeats a pair also gets a ``lane`` label."""
    if port is None:
        return None
    pairs = [(provider, model) for _, provider, model in runs]
    repeated = len(set(pairs)) < len(pairs)
    labelled = [
        (executor, [("provider", provider), ("model", model), *([("lane", str(i))] if repeated else [])])
        for i, (executor, provider, model) in enumerate(runs)
    ]
    try:
        server = _native.MetricsServer(port, runs=labelled)
    except _native.NativeError as exc:
        raise InputError(f"--metrics-port: {exc}") from None
    print(f"metrics: {server.url}", file=err)
    return server


def stop_metrics(server: _native.MetricsServer | None) -> None:
    if server is not None:
        server.stop()


def run_metrics(executor: _native.Executor) -> dict[str, Any]:
    """The executor's metrics for the output's summary metadata (retries by cause, the latency
    histogram, rows/s, tokens/s), on top of its counters."""
    metrics = executor.metrics()
    return {
        "retries_by_cause": metrics["retries_by_cause"],
        "latency_buckets_s": metrics["latency_buckets"],
        "latency_count": metrics["latency_count"],
        "latency_sum_s": round(metrics["latency_sum_s"], 6),
        "rows_per_s": round(metrics["rows_per_s"], 3),
        "tokens_per_s": round(metrics["tokens_per_s"], 3),
    }


def format_metrics(summary: Mapping[str, Any]) -> list[str]:
    """Lines for `status` from a summary written by :func:`run_metrics` (empty for older runs)."""
    lines: list[str] = []
    if "requests" in summary:
        lines.append(f"requests: {summary['requests']} ({summary.get('retries', 0)} retries, {summary.get('rate_limited', 0)} rate limited)")
    causes = summary.get("retries_by_cause") or {}
    if causes:
        lines.append("retries by cause: " + ", ".join(f"{k}={v}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1])))
    if "rows_per_s" in summary:
        lines.append(f"throughput: {summary['rows_per_s']:.1f} rows/s, {summary.get('tokens_per_s', 0.0):.1f} completion tokens/s")
    buckets = summary.get("latency_buckets_s") or {}
    if buckets and summary.get("latency_count"):
        previous, last = 0, "0"
        parts = []
        for bound, cumulative in buckets.items():
            if cumulative > previous:
                parts.append(f"<={bound}s: {cumulative - previous}" if bound != "+Inf" else f">{last}s: {cumulative - previous}")
            previous, last = cumulative, bound
        lines.append("attempt latency: " + ", ".join(parts))
    return lines
