"""prompt-runner: run prompt datasets against LLM APIs, fast, at the rate limit, resumable."""

__version__ = "0.1.0"
