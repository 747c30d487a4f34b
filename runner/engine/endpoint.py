"""Where requests go and with which key: base URLs, key lookup, and the in-process mock provider."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from runner.errors import InputError

DEFAULT_BASES = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
#: Where the official SDKs read the base URL and the key (Azure: the `openai` SDK's AzureOpenAI).
BASE_ENV = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL", "azure": "AZURE_OPENAI_ENDPOINT"}
KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "azure": "AZURE_OPENAI_API_KEY"}
API_VERSION_ENV = "OPENAI_API_VERSION"
PROVIDERS = ("openai", "anthropic", "azure", "mock")

#: The model name a mock run records when none is given.
MOCK_MODEL = "mock-echo"


@dataclass
class Endpoint:
    """A resolved provider endpoint. `wire` is the format spoken on the wire."""

    provider: str
    wire: str
    api_base: str
    api_key: str
    mock: Any = None
    #: Azure OpenAI's `api-version` query parameter.
    api_version: str | None = None

    def close(self) -> None:
        if self.mock is not None:
            self.mock.stop()
            self.mock = None


def resolve(
    provider: str, api_base: str | None, api_key_env: str | None, mock_config: str = "{}", api_version: str | None = None
) -> Endpoint:
    """Finds the base URL and key as the official SDKs do; starts the mock for `mock`. Azure
    OpenAI: the resource's endpoint (`https://NAME.openai.azure.com`), the model is the
    deployment's name, and an `api-version` is required."""
    if provider not in PROVIDERS:
        raise InputError(f"--provider: expected one of {', '.join(PROVIDERS)}, got {provider!r}")
    if provider == "mock":
        from runner._native import MockServer

        server = MockServer(mock_config)
        return Endpoint("mock", "openai", f"{server.url}/v1", server.api_key, mock=server)
    if provider == "azure":
        base = api_base or os.environ.get(BASE_ENV[provider])
        if not base:
            raise InputError(f"--api-base (or {BASE_ENV[provider]}) is required with --provider azure: your resource's endpoint")
        version = api_version or os.environ.get(API_VERSION_ENV)
        if not version:
            raise InputError(f"--api-version (or {API_VERSION_ENV}) is required with --provider azure, e.g. 2024-10-21")
    else:
        base = api_base or os.environ.get(BASE_ENV[provider]) or DEFAULT_BASES[provider]
        version = None
    env_name = api_key_env or KEY_ENV[provider]
    key = os.environ.get(env_name, "")
    if not key:
        raise InputError(f"{env_name} is not set: export your {provider} API key (or name another variable with --api-key-env)")
    return Endpoint(provider, provider, base.rstrip("/"), key, api_version=version)
