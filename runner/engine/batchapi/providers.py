"""The two providers' Batch APIs behind one interface: OpenAI's Files + Batches, Anthropic's
Message Batches. Each turns rows' request bodies into its lines, creates a batch, finds a batch a
crashed run created but never recorded, reads a batch's state, cancels it, and reads its
results back as (custom id, HTTP status, body, error type, error)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Protocol

from runner.engine.batchapi.http import Http

#: How far a provider's clock may be behind ours when a batch's creation time is compared with
#: the moment its intent was recorded.
CLOCK_SKEW = 600.0
#: Batches per page when listing.
PAGE = 100

#: Anthropic's `errored` result types as the HTTP statuses the live path would have seen.
ANTHROPIC_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


@dataclass
class Batch:
    """A provider's batch, in the terms the engine needs."""

    id: str
    #: The provider's own word for its state (`in_progress`, `completed`, `ended`, ...).
    status: str
    ended: bool
    #: Seconds since the epoch.
    created_at: float
    total: int = 0
    ok: int = 0
    failed: int = 0
    #: Where its results are (file contents or a results URL), once it has ended.
    results: list[str] = field(default_factory=list)
    #: Why a batch failed as a whole (OpenAI's validation errors).
    errors: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.ok + self.failed


#: One result line: custom id, HTTP status, response body (JSON text), error type, error message.
Result = tuple[str, int | None, str | None, str | None, str | None]


class Provider(Protocol):
    """One provider's Batch API (its limits per batch are in `plan.LIMITS`)."""

    http: Http

    def line(self, custom_id: str, body: str) -> str: ...
    def create(self, name: str, lines: list[str], tag: dict[str, str], uploaded: Callable[[str], None], file_id: str | None) -> Batch: ...
    def find(self, tag: dict[str, str], since: float, count: int, claimed: set[str]) -> Batch | None: ...
    def get(self, batch_id: str) -> Batch: ...
    def cancel(self, batch_id: str) -> Batch: ...
    def results(self, batch: Batch) -> Iterator[Result]: ...


class OpenAIBatches:
    """`POST /files` (purpose batch), then `POST /batches` with the run's tag as metadata."""

    endpoint = "/v1/chat/completions"

    def __init__(self, http: Http) -> None:
        self.http = http

    def line(self, custom_id: str, body: str) -> str:
        return f'{{"custom_id":{json.dumps(custom_id)},"method":"POST","url":"{self.endpoint}","body":{body}}}'

    def create(self, name: str, lines: list[str], tag: dict[str, str], uploaded: Callable[[str], None], file_id: str | None) -> Batch:
        if file_id is None:
            data = ("\n".join(lines) + "\n").encode()
            file = self.http.json("POST", "/files", files={"file": (f"{name}.jsonl", data, "application/jsonl")}, data={"purpose": "batch"})
            file_id = str(file["id"])
            uploaded(file_id)
        body = {"input_file_id": file_id, "endpoint": self.endpoint, "completion_window": "24h", "metadata": tag}
        return self._batch(self.http.json("POST", "/batches", json=body))

    def find(self, tag: dict[str, str], since: float, count: int, claimed: set[str]) -> Batch | None:
        """The batch whose metadata is `tag` (newest first, back to shortly before `since`)."""
        after = None
        while True:
            page = self.http.json("GET", "/batches", params={"limit": PAGE, **({"after": after} if after else {})})
            data = page.get("data") or []
            for item in data:
                batch = self._batch(item)
                if all(batch.metadata.get(k) == v for k, v in tag.items()):
                    return batch
                if batch.created_at < since - CLOCK_SKEW:
                    return None
            if not page.get("has_more") or not data:
                return None
            after = data[-1]["id"]

    def get(self, batch_id: str) -> Batch:
        return self._batch(self.http.json("GET", f"/batches/{batch_id}"))

    def cancel(self, batch_id: str) -> Batch:
        return self._batch(self.http.json("POST", f"/batches/{batch_id}/cancel"))

    def results(self, batch: Batch) -> Iterator[Result]:
        for path in batch.results:
            for text in self.http.lines(path):
                line = json.loads(text)
                custom_id = str(line.get("custom_id"))
                error, response = line.get("error"), line.get("response")
                if error:
                    code = str(error.get("code") or "")
                    kind = {"batch_expired": "expired", "batch_cancelled": "cancelled"}.get(code, "server_error")
                    yield custom_id, None, None, kind, f"{code}: {error.get('message') or ''}".strip(": ")
                elif response:
                    yield custom_id, int(response.get("status_code") or 0), json.dumps(response.get("body")), None, None
                else:
                    yield custom_id, None, None, "invalid_response", "a result line with neither a response nor an error"

    @staticmethod
    def _batch(item: dict[str, Any]) -> Batch:
        counts = item.get("request_counts") or {}
        status = str(item.get("status"))
        errors = (item.get("errors") or {}).get("data") or []
        return Batch(
            id=str(item["id"]),
            status=status,
            ended=status in ("completed", "failed", "expired", "cancelled"),
            created_at=float(item.get("created_at") or 0),
            total=int(counts.get("total") or 0),
            ok=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            results=[f"/files/{item[k]}/content" for k in ("output_file_id", "error_file_id") if item.get(k)],
            errors="; ".join(_validation_error(e) for e in errors) or None,
            metadata=dict(item.get("metadata") or {}),
        )


class AnthropicBatches:
    """`POST /v1/messages/batches`; no metadata, so a lost batch is found by its size and time."""

    def __init__(self, http: Http) -> None:
        self.http = http

    def line(self, custom_id: str, body: str) -> str:
        return f'{{"custom_id":{json.dumps(custom_id)},"params":{body}}}'

    def create(self, name: str, lines: list[str], tag: dict[str, str], uploaded: Callable[[str], None], file_id: str | None) -> Batch:
        content = ('{"requests":[' + ",".join(lines) + "]}").encode()
        headers = {"content-type": "application/json"}
        return self._batch(self.http.json("POST", "/v1/messages/batches", content=content, headers=headers))

    def find(self, tag: dict[str, str], since: float, count: int, claimed: set[str]) -> Batch | None:
        """The batch of `count` requests created closest after `since` that no record claims."""
        after, best = None, None
        while True:
            params: dict[str, Any] = {"limit": PAGE, **({"after_id": after} if after else {})}
            page = self.http.json("GET", "/v1/messages/batches", params=params)
            data = page.get("data") or []
            older = False
            for item in data:
                batch = self._batch(item)
                if batch.created_at < since - CLOCK_SKEW:
                    older = True
                    break
                closer = best is None or abs(batch.created_at - since) < abs(best.created_at - since)
                if batch.total == count and batch.id not in claimed and closer:
                    best = batch
            if older or not page.get("has_more") or not data:
                return best
            after = page.get("last_id") or data[-1]["id"]

    def get(self, batch_id: str) -> Batch:
        return self._batch(self.http.json("GET", f"/v1/messages/batches/{batch_id}"))

    def cancel(self, batch_id: str) -> Batch:
        return self._batch(self.http.json("POST", f"/v1/messages/batches/{batch_id}/cancel"))

    def results(self, batch: Batch) -> Iterator[Result]:
        for url in batch.results:
            for text in self.http.lines(url):
                line = json.loads(text)
                custom_id, result = str(line.get("custom_id")), line.get("result") or {}
                kind = result.get("type")
                if kind == "succeeded":
                    yield custom_id, 200, json.dumps(result.get("message")), None, None
                elif kind == "errored":
                    error = result.get("error") or {}
                    nested = error.get("error")
                    inner: dict[str, Any] = nested if isinstance(nested, dict) else error
                    yield custom_id, ANTHROPIC_STATUS.get(str(inner.get("type")), 500), json.dumps(error), None, None
                elif kind == "expired":
                    yield custom_id, None, None, "expired", "the batch expired before this request ran"
                elif kind == "canceled":
                    yield custom_id, None, None, "cancelled", "the batch was cancelled before this request ran"
                else:
                    yield custom_id, None, None, "invalid_response", f"a result of unknown type {kind!r}"

    @staticmethod
    def _batch(item: dict[str, Any]) -> Batch:
        counts = {k: int(v or 0) for k, v in (item.get("request_counts") or {}).items()}
        status = str(item.get("processing_status"))
        return Batch(
            id=str(item["id"]),
            status=status,
            ended=status == "ended",
            created_at=_epoch(item.get("created_at")),
            total=sum(counts.values()),
            ok=counts.get("succeeded", 0),
            failed=counts.get("errored", 0) + counts.get("canceled", 0) + counts.get("expired", 0),
            results=[item["results_url"]] if status == "ended" and item.get("results_url") else [],
        )


def _epoch(text: Any) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _validation_error(error: dict[str, Any]) -> str:
    line = f" (line {error['line']})" if error.get("line") else ""
    return f"{error.get('code') or 'invalid'}{line}: {error.get('message') or ''}"
