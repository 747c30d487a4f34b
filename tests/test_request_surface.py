"""End to end against the mock server: what a request carries beyond its messages. Parameters
(run, model, row), Batch API files as written, reasoning models, structured outputs, tools,
headers, Azure, and what the answers cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e import base_for, cli, expected_reply, mock, read_output, stats, write_jsonl

SECRET = "gw-secret-Zq8w3XkT9pLm2Vb7"


def run(tmp_path: Path, server, rows: list[dict], *extra: str, provider: str = "openai", model: str = "gpt-4o-mini",
        name: str = "out", env: dict[str, str] | None = None):
    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / f"{name}.parquet"
    res = cli("run", str(path), "-o", str(out), "--provider", provider, "--model", model,
              "--api-base", base_for(server, provider), *extra,
              env={"OPENAI_API_KEY": server.api_key, "ANTHROPIC_API_KEY": server.api_key, **(env or {})})
    return res, out


def test_a_batch_api_file_sends_every_body_field(tmp_path: Path) -> None:
    server = mock()
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": f"batch prompt {i}"}],
                  "max_completion_tokens": 3, "temperature": 0.5, "seed": 7, "top_p": 0.9}}
        for i in range(10)
    ]
    res, out = run(tmp_path, server, lines, model="ignored-flag-model")
    assert res.code == 0, res.stderr
    received = stats(server)["params"]
    for field in ("max_completion_tokens", "temperature", "seed", "top_p"):
        assert received.get(field) == 10, received
    df = read_output(out)
    assert df["model"].unique().to_list() == ["gpt-4.1-mini"]  # the lines' model is the run's
    # max_completion_tokens=3 reached the server: the echo is cut to three words.
    assert df["output"].to_list() == [expected_reply(f"batch prompt {i}", 3) for i in range(10)]
    dry = cli("run", str(tmp_path / "out.jsonl"), "-o", str(tmp_path / "dry.parquet"), "--dry-run")
    assert dry.code == 0 and "Batch API lines run as written" in dry.stderr and '"seed": 7' in dry.stderr


def test_a_reasoning_model_gets_max_completion_tokens(tmp_path: Path) -> None:
    server = mock()
    res, out = run(tmp_path, server, [{"prompt": "one two three four five"}], "--max-tokens", "2", model="o4-mini")
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df["output"].to_list() == [expected_reply("one two three four five", 2)]
    assert stats(server)["params"].get("max_completion_tokens") == 1
    assert "max_tokens" not in stats(server)["params"]
    assert df["reasoning_tokens"][0] is not None and df["reasoning_tokens"][0] > 0


def test_a_temperature_a_reasoning_model_refuses_is_caught_before_sending(tmp_path: Path) -> None:
    server = mock()
    res, _ = run(tmp_path, server, [{"prompt": "hi"}], "--temperature", "0.2", model="gpt-5-mini")
    assert res.code == 2
    assert "gpt-5-mini is a reasoning model" in res.stderr and "--param temperature=0.2" in res.stderr
    assert "Traceback" not in res.stderr and stats(server)["requests"] == 0
    # Insisting sends it, and the server refuses it as OpenAI does.
    res, out = run(tmp_path, server, [{"prompt": "hi"}], "--param", "temperature=0.2", "--no-fail-fast",
                   model="gpt-5-mini", name="insist")
    assert res.code == 1
    df = read_output(out)
    assert df["http_status"].to_list() == [400] and "temperature" in df["error"][0]


def test_row_params_override_model_and_run_params(tmp_path: Path) -> None:
    server = mock()
    rows = [{"prompt": "a b c d e f g h", "params": {"max_tokens": 5} if i % 2 else None} for i in range(6)]
    res, out = run(tmp_path, server, rows, "--param", "max_tokens=3")
    assert res.code == 0, res.stderr
    outputs = read_output(out)["output"].to_list()
    assert outputs == [expected_reply("a b c d e f g h", 5 if i % 2 else 3) for i in range(6)]
    bad = [{"prompt": "x", "params": {"model": "other"}}]
    res, _ = run(tmp_path, server, bad, name="bad")
    assert res.code == 2 and "bad.jsonl:1: params.model" in res.stderr
    res, _ = run(tmp_path, server, [{"prompt": "x"}], "--param", "messages=[]", name="owned")
    assert res.code == 2 and "'messages' is not a parameter" in res.stderr


def test_structured_output_is_checked_by_the_json_scorer(tmp_path: Path) -> None:
    server = mock()
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
              "required": ["answer", "confidence"], "additionalProperties": False}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    (tmp_path / "tools.json").write_text(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]))
    write_jsonl(tmp_path / "in.jsonl", [{"question": f"question {i}"} for i in range(8)])
    job = tmp_path / "job.toml"
    job.write_text(f"""
input = "{tmp_path / 'in.jsonl'}"
output = "{tmp_path / 'out.parquet'}"
[request]
template = "{{{{ question }}}}"
response_format = "{tmp_path / 'schema.json'}"
[request.params]
seed = 11
[[models]]
provider = "openai"
model = "gpt-4.1-mini"
api_base = "{base_for(server, 'openai')}"
api_key_env = "MOCK_KEY"
[[models]]
provider = "anthropic"
model = "claude-haiku-4-5"
api_base = "{base_for(server, 'anthropic')}"
api_key_env = "MOCK_KEY"
[score]
method = "json"
min_pass_rate = 1.0
""")
    env = {"MOCK_KEY": server.api_key}
    dry = cli("run", "--job", str(job), "--dry-run", env=env)
    assert dry.code == 0 and '"json_schema"' in dry.stderr and '"seed": 11' in dry.stderr
    res = cli("run", "--job", str(job), env=env)
    assert res.code == 0, res.stderr
    df = read_output(tmp_path / "out.parquet")
    assert df.height == 16 and df["passed"].all()
    for text in df["output"].to_list():
        assert set(json.loads(text)) == {"answer", "confidence"}
    assert stats(server)["params"].get("seed") == 16


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_tool_call_lands_in_the_output(tmp_path: Path, provider: str) -> None:
    server = mock()
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    if provider == "anthropic":
        tools = [{"name": "get_weather", "description": "Weather in a city",
                  "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    rows = [{"prompt": "please call get_weather for Paris"}, {"prompt": "just say hello"}]
    res, out = run(tmp_path, server, rows, "--tools", str(tmp_path / "tools.json"), provider=provider,
                   model="claude-haiku-4-5" if provider == "anthropic" else "gpt-4.1-mini")
    assert res.code == 0, res.stderr
    df = read_output(out)
    calls = json.loads(df["tool_calls"][0])
    assert calls[0]["function"]["name"] == "get_weather"
    assert isinstance(json.loads(calls[0]["function"]["arguments"])["city"], str)
    assert df["finish_reason"][0] in ("tool_calls", "tool_use")
    assert df["tool_calls"][1] is None and df["output"][1] == expected_reply("just say hello")


def test_azure_deployment_url_api_key_header_and_api_version(tmp_path: Path) -> None:
    server = mock()
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hello azure"}])
    out = tmp_path / "out.parquet"
    base = ["run", str(path), "-o", str(out), "--provider", "azure", "--model", "my-deployment"]
    missing = cli(*base, env={"AZURE_OPENAI_API_KEY": server.api_key, "AZURE_OPENAI_ENDPOINT": server.url})
    assert missing.code == 2 and "--api-version (or OPENAI_API_VERSION) is required" in missing.stderr
    res = cli(*base, env={"AZURE_OPENAI_API_KEY": server.api_key, "AZURE_OPENAI_ENDPOINT": server.url,
                          "OPENAI_API_VERSION": "2024-10-21"})
    assert res.code == 0, res.stderr
    assert read_output(out)["output"].to_list() == [expected_reply("hello azure")]
    paths = stats(server)["by_path"]
    assert paths.get("/openai/deployments/my-deployment/chat/completions") == 1, paths


def test_cached_and_reasoning_tokens_are_priced_right(tmp_path: Path) -> None:
    server = mock()
    system = "You are a careful grader. " * 40
    rows = [{"prompt": f"grade answer {i}"} for i in range(3)]
    job_prices = tmp_path / "job.toml"
    write_jsonl(tmp_path / "in.jsonl", rows)
    job_prices.write_text(f"""
input = "{tmp_path / 'in.jsonl'}"
output = "{tmp_path / 'out.parquet'}"
[request]
system = "{system}"
[[models]]
provider = "openai"
model = "o4-mini"
api_base = "{base_for(server, 'openai')}"
api_key_env = "MOCK_KEY"
[limits]
concurrency = 1
[prices.o4-mini]
input = 1.0
output = 4.0
cached_input = 0.25
""")
    res = cli("run", "--job", str(job_prices), env={"MOCK_KEY": server.api_key})
    assert res.code == 0, res.stderr
    df = read_output(tmp_path / "out.parquet")
    assert df["cached_prompt_tokens"].fill_null(0).sum() > 0, df.select("prompt_tokens", "cached_prompt_tokens")
    for row in df.iter_rows(named=True):
        cached = row["cached_prompt_tokens"] or 0
        expected = ((row["prompt_tokens"] - cached) * 1.0 + cached * 0.25 + row["completion_tokens"] * 4.0) / 1e6
        assert row["cost_usd"] == pytest.approx(expected)
        assert row["reasoning_tokens"] <= row["completion_tokens"]


def test_an_extra_header_is_sent_and_a_credential_never_shows(tmp_path: Path) -> None:
    server = mock()
    res, out = run(tmp_path, server, [{"prompt": "hi"}], "--header", "x-gateway-team=evals",
                   "--header", "x-gateway-token=env:GW_TOKEN", "--log-level", "debug", env={"GW_TOKEN": SECRET})
    assert res.code == 0, res.stderr
    headers = stats(server)["headers"]
    assert headers.get("x-gateway-team") == 1 and headers.get("x-gateway-token") == 1, headers
    everything = res.stdout + res.stderr + json.dumps(stats(server))
    for f in [out, *out.parent.rglob("*")]:
        if f.is_file():
            everything += f.read_bytes().decode("latin-1")
    assert SECRET not in everything
    literal, _ = run(tmp_path, server, [{"prompt": "hi"}], "--header", f"x-api-key={SECRET}", name="literal")
    assert literal.code == 2 and "x-api-key=env:VARIABLE" in literal.stderr and SECRET not in literal.stderr


def test_keep_raw_keeps_the_response(tmp_path: Path) -> None:
    server = mock()
    res, out = run(tmp_path, server, [{"prompt": "raw please"}], "--keep-raw")
    assert res.code == 0, res.stderr
    raw = json.loads(read_output(out)["raw"][0])
    assert raw["choices"][0]["message"]["content"] == expected_reply("raw please")
    plain, out2 = run(tmp_path, server, [{"prompt": "raw please"}], name="plain")
    assert plain.code == 0 and read_output(out2)["raw"].to_list() == [None]


def test_a_stream_answered_with_json_keeps_its_text(tmp_path: Path) -> None:
    """Gateways (LiteLLM for some models) answer `stream: true` with one JSON body."""
    import asyncio

    from runner import Message, ModelClient, ModelConfig

    server = mock(stream_as_json=True)
    res, out = run(tmp_path, server, [{"prompt": "streamed but whole"}], "--stream")
    assert res.code == 0, res.stderr
    assert read_output(out)["output"].to_list() == [expected_reply("streamed but whole")]

    async def ask() -> str:
        config = ModelConfig(api_key=server.api_key, api_base=base_for(server, "openai"), model="m", stream=True)
        return "".join([chunk.content async for chunk in ModelClient().run([Message("user", "client text")], config)])

    assert asyncio.run(ask()) == expected_reply("client text")


def test_n_choices_and_logprobs_land_in_their_columns_and_come_back_from_the_cache(tmp_path: Path) -> None:
    server = mock()
    cache_dir = {"PROMPT_RUNNER_CACHE_DIR": str(tmp_path / "cache")}
    args = ("--param", "n=3", "--param", "logprobs=true", "--cache")
    res, out = run(tmp_path, server, [{"prompt": "three ways"}], *args, env=cache_dir)
    assert res.code == 0, res.stderr
    df = read_output(out)
    assert df["choices"].to_list() == [[expected_reply("three ways")] * 3]
    assert df["output"][0] == expected_reply("three ways")
    assert [t["token"].strip() for t in json.loads(df["logprobs"][0])["content"]] == expected_reply("three ways").split()
    again, out2 = run(tmp_path, server, [{"prompt": "three ways"}], *args, name="again", env=cache_dir)
    assert again.code == 0, again.stderr
    cached = read_output(out2)
    assert cached["cache_hit"].to_list() == [True] and stats(server)["requests"] == 1
    assert cached["choices"].to_list() == df["choices"].to_list() and cached["logprobs"][0] == df["logprobs"][0]


def test_model_params_job_headers_and_the_api_version_flag(tmp_path: Path) -> None:
    server = mock()
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a b c d e f"}])
    job = tmp_path / "job.toml"
    job.write_text(f"""
input = "{tmp_path / 'in.jsonl'}"
output = "{tmp_path / 'out.parquet'}"
[request.params]
max_tokens = 4
[request.headers]
x-team = "evals"
[[models]]
provider = "openai"
model = "short"
api_base = "{base_for(server, 'openai')}"
api_key_env = "MOCK_KEY"
params = {{ max_tokens = 2 }}
[[models]]
provider = "openai"
model = "long"
api_base = "{base_for(server, 'openai')}"
api_key_env = "MOCK_KEY"
""")
    res = cli("run", "--job", str(job), env={"MOCK_KEY": server.api_key})
    assert res.code == 0, res.stderr
    df = read_output(tmp_path / "out.parquet")
    by_model = dict(zip(df["model"].to_list(), df["output"].to_list()))
    assert by_model == {"short": expected_reply("a b c d e f", 2), "long": expected_reply("a b c d e f", 4)}
    assert stats(server)["headers"].get("x-team") == 2
    # --api-version: for Azure only, from the flag as from the variable.
    refused, _ = run(tmp_path, server, [{"prompt": "x"}], "--api-version", "2024-10-21", name="notazure")
    assert refused.code == 2 and "only Azure OpenAI takes an api-version" in refused.stderr
    path = write_jsonl(tmp_path / "az.jsonl", [{"prompt": "hello azure"}])
    res = cli("run", str(path), "-o", str(tmp_path / "az.parquet"), "--provider", "azure", "--model", "dep",
              "--api-base", server.url, "--api-version", "2024-10-21", env={"AZURE_OPENAI_API_KEY": server.api_key})
    assert res.code == 0, res.stderr
    assert stats(server)["by_path"].get("/openai/deployments/dep/chat/completions") == 1


def test_the_json_scorer_checks_a_response_format_given_on_the_command_line(tmp_path: Path) -> None:
    server = mock()
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q"}])
    job = tmp_path / "job.toml"
    job.write_text(f"""
input = "{tmp_path / 'in.jsonl'}"
output = "{tmp_path / 'out.parquet'}"
[[models]]
provider = "openai"
model = "m"
api_base = "{base_for(server, 'openai')}"
api_key_env = "MOCK_KEY"
[score]
method = "json"
""")
    res = cli("run", "--job", str(job), "--response-format", str(tmp_path / "schema.json"), env={"MOCK_KEY": server.api_key})
    assert res.code == 0, res.stderr
    import pyarrow.parquet as pq

    scored = json.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"prompt_runner.score"])
    assert scored["schema"] == schema and read_output(tmp_path / "out.parquet")["passed"].to_list() == [True]
