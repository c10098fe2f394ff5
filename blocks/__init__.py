"""Prefect blocks for every integration; `prefect block register -m blocks` registers them all."""

from blocks.anthropic import AnthropicCredentials
from blocks.mongo import MongoOpportunityStore
from blocks.ses import SesEmailSender
from blocks.slack import SlackCredentials
from blocks.sources import HttpCrmSource, HttpUsageSource
from blocks.zoom import ZoomCredentials

__all__ = [
    "AnthropicCredentials",
    "HttpCrmSource",
    "HttpUsageSource",
    "MongoOpportunityStore",
    "SesEmailSender",
    "SlackCredentials",
    "ZoomCredentials",
]
