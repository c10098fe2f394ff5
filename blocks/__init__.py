"""Prefect blocks for every integration; `prefect block register -m blocks` registers them all."""

from blocks.sources import HttpCrmSource, HttpUsageSource

__all__ = ["HttpCrmSource", "HttpUsageSource"]
