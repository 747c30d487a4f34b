"""The async model client: one chat request at a time from asyncio, on the native runtime
(`models.py`). Its names are those of `runner` itself (`runner.ModelClient`, ...)."""

from runner.client import models
from runner.client.models import *  # noqa: F403 - the client's public names, listed in models.__all__

__all__ = models.__all__
