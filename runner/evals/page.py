"""Self-contained HTML pages (the report and the comparison): Jinja with autoescape, the page's
own script and style inlined and admitted by hash in a Content-Security-Policy that forbids
every outside request and every inline event handler."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from runner.errors import InputError

__all__ = ["csp", "pack_json", "render_page", "usd", "write_page"]


def usd(value: float | None) -> str:
    """Dollars: four decimals, six below a cent (a cheap model's run costs fractions of one)."""
    if value is None:
        return "–"
    return f"${value:,.4f}" if value == 0 or abs(value) >= 0.01 else f"${value:,.6f}"


def _asset(name: str) -> str:
    return resources.files("runner.evals.pages").joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def csp(script: str | None, style: str) -> str:
    """The policy: nothing may be fetched (``default-src 'none'``, images only from ``data:``),
    and only this script and this style run, by their hashes; inline handlers (``onerror=``) and
    injected ``<script>`` elements have no hash, so they never run."""
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256(script)}" if script else "script-src 'none'",
            f"style-src {_sha256(style)}",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


@cache
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: _asset(name)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["int"] = lambda v: "–" if v is None else f"{v:,}"
    env.filters["ms"] = lambda v: "–" if v is None else f"{v:,.0f} ms"
    env.filters["usd"] = usd
    env.filters["pct"] = lambda v: "–" if v is None else f"{v:.1%}"
    return env


def render_page(template: str, *, script: str | None, **context: Any) -> str:
    """Renders ``template`` (a file of runner/evals/pages) with the shared style, ``script`` (a
    file name there, or None) and the policy admitting exactly those two."""
    style = _asset("page.css")
    code = _asset(script) if script else None
    return _env().get_template(template).render(style=style, script=code, csp=csp(code, style), **context)


def pack_json(value: Any) -> str:
    """``value`` as gzip-compressed JSON in base64: the form the page's script unpacks with the
    browser's DecompressionStream (no library, nothing to escape inside the page)."""
    raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def write_page(path: str | Path, text: str) -> None:
    """Writes a page atomically; one-line InputError naming the file when it cannot."""
    file = Path(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, file)
    except OSError as err:
        raise InputError(f"{file}: cannot write the page: {err.strerror}") from None
