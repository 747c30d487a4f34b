"""The Batch APIs' HTTP calls: retried when the provider is busy or the network fails, and errors
that never carry a credential (neither the key nor a header's value)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from runner.errors import RunnerError

#: Attempts of one call before it fails; waits between them grow from 1 s, at most 30 s.
ATTEMPTS = 6
#: (not 409: for a batch, "cannot cancel a batch that has ended")
RETRY_STATUSES = {408, 429, 500, 502, 503, 504, 529}


class BatchApiError(RunnerError):
    """A Batch API call that failed for good. `status` is the HTTP status, if one came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Http:
    """One provider's endpoint: its base URL and the headers every call carries."""

    def __init__(self, base: str, headers: Mapping[str, str], secrets: list[str], timeout: float = 120.0) -> None:
        self.base = base.rstrip("/")
        self._secrets = [s for s in secrets if s]
        self._client = httpx.Client(headers=dict(headers), timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self._client.close()

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON of a call to `path` (relative to the base, or an absolute URL)."""
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise BatchApiError(f"{method} {self._shown(path)}: the answer is not JSON: {self._redact(response.text[:200])}") from None

    def lines(self, path: str) -> Iterator[str]:
        """The non-empty lines of a JSONL download, read as they arrive."""
        url = self._url(path)
        for attempt in range(ATTEMPTS):
            try:
                with self._client.stream("GET", url) as response:
                    if response.status_code >= 400:
                        response.read()
                        self._check(response, "GET", path, attempt)
                        continue
                    for line in response.iter_lines():
                        if line.strip():
                            yield line
                    return
            except httpx.TransportError as err:
                self._wait_or_fail("GET", path, attempt, f"{type(err).__name__}: {err}")
        raise BatchApiError(f"GET {self._shown(path)}: failed after {ATTEMPTS} attempts")

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(ATTEMPTS):
            try:
                response = self._client.request(method, self._url(path), **kwargs)
            except httpx.TransportError as err:
                self._wait_or_fail(method, path, attempt, f"{type(err).__name__}: {err}")
                continue
            if response.status_code < 400:
                return response
            self._check(response, method, path, attempt)
        raise BatchApiError(f"{method} {self._shown(path)}: failed after {ATTEMPTS} attempts")

    def _check(self, response: httpx.Response, method: str, path: str, attempt: int) -> None:
        """Waits before another attempt when the status asks for one; raises otherwise."""
        status = response.status_code
        message = f"{method} {self._shown(path)}: HTTP {status}: {self._redact(error_text(response))}"
        if status not in RETRY_STATUSES or attempt == ATTEMPTS - 1:
            raise BatchApiError(message, status)
        time.sleep(_retry_after(response) or _backoff(attempt))

    def _wait_or_fail(self, method: str, path: str, attempt: int, why: str) -> None:
        if attempt == ATTEMPTS - 1:
            raise BatchApiError(f"{method} {self._shown(path)}: {self._redact(why)}")
        time.sleep(_backoff(attempt))

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base}{path}"

    def _shown(self, path: str) -> str:
        return self._redact(self._url(path).split("?")[0])

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


def error_text(response: httpx.Response) -> str:
    """The provider's own message from an error body (both providers put it at error.message)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        nested = error.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else error
        return str(inner.get("message") or json.dumps(inner))[:300]
    return json.dumps(body)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = response.headers.get(name)
        if value:
            try:
                return min(60.0, max(0.0, float(value) / scale))
            except ValueError:
                continue
    return None


def _backoff(attempt: int) -> float:
    return min(30.0, 2.0**attempt)
