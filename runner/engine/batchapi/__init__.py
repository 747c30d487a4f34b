"""The providers' Batch APIs as an engine (`--batch-api`): see `engine.BatchEngine`."""

from runner.engine.batchapi.engine import BatchEngine

__all__ = ["BatchEngine"]
