"""The HTML report and the compare page in a real browser (Debian's chromium, driven by
Playwright): what a person sees, what the filters do, that untrusted text runs nothing and that
nothing leaves the page. Skipped only where chromium is absent and CI is not set."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from e2e import cli, write_jsonl

from runner.evals.page import usd
from runner.evals.report import model_stats

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if not path:
        message = "chromium and playwright are needed (apt-get install -y chromium; pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must run the browser tests (.ci/run installs chromium)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class Seen:
    """What happened while a page was open: console messages, page errors, requests, dialogs."""

    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def clean(self, url: str) -> None:
        assert not self.errors, self.errors
        assert not [m for m in self.console if m.startswith(("error", "warning"))], self.console
        assert self.requests == [url], self.requests  # the page itself, nothing else
        assert not self.dialogs, self.dialogs


def open_page(browser: Any, path: Path, wait_rows: bool = True) -> tuple[Any, Seen]:
    seen = Seen()
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.on("console", lambda m: seen.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("dialog", lambda d: (seen.dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    if wait_rows:
        wait_count(page, "rows")
    return page, seen


def job(tmp: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    data = write_jsonl(tmp / f"{name}.jsonl", rows)
    out = tmp / f"{name}.parquet"
    (tmp / f"{name}.toml").write_text(
        f'name = "{name}"\ninput = "{data}"\noutput = "{out}"\n[request]\ntemplate = "{{{{ question }}}}"\n'
        '[[models]]\nprovider = "mock"\nmodel = "mock-small"\n[[models]]\nprovider = "mock"\nmodel = "mock-large"\n'
        '[score]\nmethod = "contains"\nexpected_column = "answer"\n'
        "[prices.mock-small]\ninput = 0.1\noutput = 0.4\n[prices.mock-large]\ninput = 1.0\noutput = 4.0\n"
    )
    cli("run", "--job", str(tmp / f"{name}.toml"), "--mock-config", '{"latency_ms": 5, "latency_jitter_ms": 30}')
    assert out.is_file()
    return out


@dataclass
class Pages:
    output: Path
    report: Path
    compare: Path


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Pages:
    tmp = tmp_path_factory.mktemp("pages")
    rows = [{"id": f"q{i:02d}", "question": f"What is {i} plus {i}?", "answer": "Echo" if i % 5 else "nope"} for i in range(30)]
    rows += [
        {"id": "xss-script", "question": SCRIPT, "answer": SCRIPT},
        {"id": "xss-img", "question": IMG, "answer": "nope"},
        {"id": "bad", "question": "this one is [[bad]]", "answer": "x"},
    ]
    base = job(tmp, "base", rows)
    rows[3]["answer"] = "nope"  # a regression per model
    rows[30]["answer"] = "nope"  # so is the script row, shown in the compare page
    new = job(tmp, "new", rows)
    report, compare = tmp / "report.html", tmp / "compare.html"
    assert cli("report", str(base), "--html", str(report)).code == 0
    assert cli("compare", str(base), str(new), "--html", str(compare)).code == 1
    return Pages(base, report, compare)


def count(page: Any) -> str:
    return str(page.inner_text("#row-count"))


def wait_count(page: Any, prefix: str) -> None:
    """Waits until the row count starts with ``prefix`` (a function, not a string: the page's
    policy forbids eval, which Playwright would use for a string predicate)."""
    page.wait_for_function("(p) => document.getElementById('row-count').textContent.startsWith(p)", arg=prefix, timeout=30_000)


def test_the_model_cards_show_the_outputs_figures(browser: Any, pages: Pages) -> None:
    page, seen = open_page(browser, pages.report)
    stats = model_stats(pq.read_table(pages.output))
    cards = page.locator("article.card")
    assert cards.count() == 2
    for i, s in enumerate(stats):
        card = cards.nth(i)
        figure = lambda name: card.locator(f'[data-figure="{name}"]').inner_text()  # noqa: B023, E731
        assert card.locator("h3").inner_text() == s["model"]
        assert (figure("rows"), figure("ok"), figure("failed")) == (str(s["rows"]), str(s["ok"]), str(s["failed"]))
        assert figure("pass-rate") == f"{s['pass_rate']:.1%}" and figure("cost") == usd(s["cost_usd"])
        assert figure("p95") == f"{s['latency_p95_ms']:,.0f} ms" and card.is_visible()
    seen.clean(pages.report.as_uri())


def test_failed_rows_come_first_and_the_filters_reduce_the_table(browser: Any, pages: Pages) -> None:
    page, seen = open_page(browser, pages.report)
    table = pq.read_table(pages.output).to_pydict()
    n = len(table["id"])
    failed = sum(1 for s, p in zip(table["status"], table["passed"]) if s != "ok" or not p)
    assert count(page) == f"rows 1–50 of {n}"
    first = page.locator("#row-body tr").first
    assert "failed" in (first.get_attribute("class") or "") and "✗ failed" in first.inner_text()
    assert page.locator("#row-body tr", has_text="bad_request").count() == 2  # the [[bad]] row, per model
    page.check("#failed-only")
    assert count(page) == f"rows 1–{failed} of {failed} (filtered from {n})"
    assert page.locator("#row-body tr").count() == failed
    assert page.locator("#row-body tr:not(.failed)").count() == 0
    page.uncheck("#failed-only")
    page.select_option("#model-filter", label="mock-large")
    assert count(page) == f"rows 1–{n // 2} of {n // 2} (filtered from {n})"
    assert set(page.locator("#row-body tr td:nth-child(2)").all_inner_texts()) == {"mock-large"}
    page.fill("#text-filter", "7 plus 7")
    wait_count(page, "rows 1–1 of 1 ")
    assert page.locator("#row-body tr").count() == 1 and "Echo: What is 7 plus 7?" in page.inner_text("#row-body")
    page.fill("#text-filter", "")
    page.select_option("#model-filter", value="")
    wait_count(page, f"rows 1–50 of {n}")
    page.click("#row-next")
    assert count(page) == f"rows 51–{n} of {n}"
    seen.clean(pages.report.as_uri())


def test_columns_sort(browser: Any, pages: Pages) -> None:
    page, seen = open_page(browser, pages.report)
    page.click("#row-head th:has-text('latency ms') button")
    assert page.get_attribute("#row-head th:has-text('latency ms')", "aria-sort") == "ascending"
    cells = page.locator("#row-body tr td:last-child").all_inner_texts()
    values = [float(c.replace(",", "")) for c in cells if c != "–"]
    assert values == sorted(values) and len(values) > 10
    page.click("#row-head th:has-text('latency ms') button")
    values = [float(c.replace(",", "")) for c in page.locator("#row-body tr td:last-child").all_inner_texts() if c != "–"]
    assert values == sorted(values, reverse=True)
    seen.clean(pages.report.as_uri())


def test_the_charts_are_drawn(browser: Any, pages: Pages) -> None:
    page, seen = open_page(browser, pages.report)
    for chart, bars in (("#chart-rate", 2), ("#chart-cost", 2), ("#chart-latency", 3)):
        rects = page.locator(f"{chart} svg rect.bar")
        assert rects.count() >= bars, chart
        box = rects.first.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, chart
        assert page.locator(chart).is_visible()
    assert page.locator("#errors tbody tr").count() == 2 and "bad_request" in page.inner_text("#errors")
    seen.clean(pages.report.as_uri())


def test_a_matrix_shows_outputs_side_by_side(browser: Any, pages: Pages) -> None:
    page, seen = open_page(browser, pages.report)
    assert page.locator("#sbs-head th").all_inner_texts()[-2:] == ["mock-small", "mock-large"]
    assert page.inner_text("#sbs-count") == "33 of 33 inputs"
    row = page.locator("#sbs-body tr", has_text="What is 1 plus 1?").first
    assert row.locator("td").nth(-1).inner_text() == row.locator("td").nth(-2).inner_text() == "✓\nEcho: What is 1 plus 1?"
    page.check("#sbs-failed")
    assert page.inner_text("#sbs-count") == "8 of 33 inputs"  # 6 'nope' answers, the img row, the [[bad]] row
    seen.clean(pages.report.as_uri())


def test_untrusted_rows_show_as_text_and_run_nothing(browser: Any, pages: Pages) -> None:
    for path in (pages.report, pages.compare):
        page, seen = open_page(browser, path, wait_rows=path == pages.report)
        if path == pages.report:
            page.fill("#text-filter", "alert(")
            wait_count(page, "rows 1–4 of 4 ")
        text = page.inner_text("body")
        assert f"Echo: {SCRIPT}" in text, path.name
        if path == pages.report:
            assert f"Echo: {IMG}" in text
        scripts = 2 if path == pages.report else 0  # the data block and the page's own script
        assert page.locator("main img").count() == 0 and page.locator("script").count() == scripts
        assert page.evaluate("typeof window.alert") == "function"
        seen.clean(path.as_uri())  # no dialog opened, no request for "x"


def test_the_policy_stops_an_injected_handler(browser: Any, pages: Pages) -> None:
    page, seen = open_page(browser, pages.report)
    blocked: list[str] = []
    page.on("requestfailed", lambda r: blocked.append(f"{r.url} {r.failure}"))
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<img id=probe src=\"x\" onerror=\"window.ran = 1\">')")
    page.wait_for_timeout(300)
    assert page.evaluate("window.ran") is None  # the handler did not run
    # img-src admits data: only: the browser refuses to fetch "x" (the attempt is still reported)
    assert blocked == [f"{pages.report.parent.as_uri()}/x csp"], blocked
    assert any("Content Security Policy" in m for m in seen.console)


def test_the_compare_page(browser: Any, pages: Pages) -> None:
    page, seen = open_page(browser, pages.compare, wait_rows=False)
    assert page.inner_text("#count-regressions b") == "4"  # q03 and the script row, per model
    assert page.locator("#regressions tbody tr").count() == 4
    assert page.locator("#model-table tbody tr").count() == 2
    assert re.fullmatch(r"-\d+\.\d pp", page.inner_text('#model-table tbody tr >> nth=0 >> [data-figure="pass-rate-delta"]'))
    seen.clean(pages.compare.as_uri())


def test_a_report_of_100000_rows_stays_usable(browser: Any, tmp_path: Path) -> None:
    from runner.evals.html_report import write_html
    from runner.evals.score import META_SCORE

    n = 100_000
    started = time.monotonic()
    table = pa.table({
        "id": [f"r{i}" for i in range(n)],
        "question": [f"Question number {i}: what is {i} times {i}?" for i in range(n)],
        "model": ["m-a" if i % 2 else "m-b" for i in range(n)],
        "status": ["error" if i % 97 == 0 else "ok" for i in range(n)],
        "output": [None if i % 97 == 0 else f"Echo: Question number {i}: what is {i} times {i}?" for i in range(n)],
        "error_type": ["server_error" if i % 97 == 0 else None for i in range(n)],
        "latency_ms": [float(20 + i % 180) for i in range(n)],
        "passed": [i % 97 != 0 and i % 10 != 0 for i in range(n)],
    }).replace_schema_metadata({META_SCORE: b'{"method": "contains"}'})
    path = tmp_path / "big.html"
    write_html(table, path)
    written = time.monotonic() - started
    page, seen = open_page(browser, path)
    opened = time.monotonic() - started - written
    assert count(page) == "rows 1–50 of 100,000" and page.locator("#row-body tr").count() == 50
    started = time.monotonic()
    page.fill("#text-filter", "number 4242:")
    wait_count(page, "rows 1–1 of 1 ")
    filtered = time.monotonic() - started
    assert path.stat().st_size < 6_000_000, path.stat().st_size
    assert written < 30 and opened < 20 and filtered < 10, (written, opened, filtered)
    seen.clean(path.as_uri())
