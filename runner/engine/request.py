"""What each request carries beyond its messages: body parameters, extra headers, a response
schema and tools; and the preflight rules for them (keys the request builder owns, headers that
carry credentials, parameters a reasoning model refuses).

Parameters merge in this order, later winning: the run's (`--param`, `[request.params]`, the
`--response-format` and `--tools` files), a model's own (`[[models]] params`), then a row's (a
`params` column, or the body of an OpenAI Batch API line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runner.errors import InputError

__all__ = [
    "OWNED",
    "check_headers",
    "check_params",
    "load_json",
    "key_values",
    "resolve_headers",
    "schema_params",
]

#: Body fields the request builder writes itself; a parameter may not replace them.
OWNED = ("model", "messages", "stream")
#: A header whose name contains one of these carries a credential: its value is never written
#: anywhere (run.json, logs, errors), so it must come from the environment (`NAME=env:VAR`).
CREDENTIAL_WORDS = ("key", "token", "auth", "secret", "cookie", "password")


def key_values(flag: str, items: Iterable[str], json_values: bool) -> dict[str, Any]:
    """`KEY=VALUE` items as a dict. With `json_values`, VALUE is read as JSON when it parses
    (`seed=7`, `stop=["\\n"]`, `logprobs=true`), else kept as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"{flag}: expected KEY=VALUE, got {item!r}")
        if json_values:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = value
    return out


def check_params(params: Mapping[str, Any], where: str) -> None:
    """Refuses a parameter the request builder owns."""
    for key in params:
        if key in OWNED:
            hint = {"model": "use --model", "messages": "use a messages column or --template", "stream": "use --stream"}
            raise InputError(f"{where}: '{key}' is not a parameter: the request builder writes it ({hint[key]})")


def is_credential(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in CREDENTIAL_WORDS)


def check_headers(headers: Mapping[str, str], where: str) -> None:
    """A header carrying a credential must name an environment variable (`env:VAR`), so that its
    value is never kept in the run's state."""
    for name, value in headers.items():
        if not name or any(c in name for c in " :\r\n"):
            raise InputError(f"{where}: {name!r} is not a header name")
        if is_credential(name) and not str(value).startswith("env:"):
            raise InputError(
                f"{where}: the header {name!r} carries a credential: give it as {name}=env:VARIABLE "
                "(read from the environment, never saved or logged)"
            )


def resolve_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers to send: `env:VAR` values read from the environment."""
    out = {}
    for name, value in headers.items():
        if str(value).startswith("env:"):
            variable = str(value)[4:]
            if variable not in os.environ:
                raise InputError(f"--header {name}: the environment variable {variable} is not set")
            out[name] = os.environ[variable]
        else:
            out[name] = str(value)
    return out


def load_json(path: str | Path, flag: str) -> Any:
    """A JSON file's content; a clear one-line error naming the file otherwise."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read the {flag} file: {err.strerror}") from None
    except ValueError as err:
        raise InputError(f"{path}: the {flag} file is not valid JSON: {err}") from None


def schema_params(provider: str, schema: Any, path: str | Path) -> dict[str, Any]:
    """The body fields that ask for output matching the JSON `schema` (a `--response-format`
    file): OpenAI's `response_format` of type `json_schema`; Anthropic's `output_config.format`."""
    if not isinstance(schema, dict):
        raise InputError(f"{path}: a response format is a JSON schema (an object)")
    if provider == "anthropic":
        return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(path).stem)[:64] or "response"
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}}
