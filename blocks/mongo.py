"""Block for the MongoDB opportunity store."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr
from pymongo import MongoClient

from tasks.mongo_store import MongoStore
from tasks.policy import request_timeout


class MongoOpportunityStore(Block):
    """Opportunities and idempotency records in MongoDB (Atlas or self-hosted)."""

    _block_type_name = "Upsell MongoDB Opportunity Store"
    _block_type_slug = "upsell-mongo-opportunity-store"
    _description = "Where the upsell flow logs opportunities and keeps its send-once records."

    uri: SecretStr = Field(description="MongoDB connection string, e.g. mongodb+srv://user:pass@cluster/…")
    database: str = Field(default="upsell")
    collection: str = Field(default="opportunities")
    idempotency_collection: str = Field(default="idempotency_records")
    suppression_collection: str = Field(default="suppressions")
    server_selection_timeout_ms: int = Field(default=10_000, gt=0, description="Give up finding a server after.")

    def get_client(self) -> MongoStore:
        """A store with its own pymongo client (connects lazily; close it when done).

        Built inside a step, no wait of the client (server selection, connect, a reply) outlasts what is left of
        the step's timeout (see `request_timeout`); elsewhere pymongo's defaults stand (no socket timeout).
        """
        timeouts: dict[str, Any] = {"serverSelectionTimeoutMS": self.server_selection_timeout_ms}
        step_left = request_timeout(None)
        if step_left is not None:
            step_left_ms = max(int(step_left * 1000), 1)
            timeouts = {
                "serverSelectionTimeoutMS": min(self.server_selection_timeout_ms, step_left_ms),
                "connectTimeoutMS": step_left_ms,
                "socketTimeoutMS": step_left_ms,
            }
        client: MongoClient[dict[str, Any]] = MongoClient(
            self.uri.get_secret_value(), tz_aware=True, appname="upsell", **timeouts
        )
        return MongoStore(
            client,
            database=self.database,
            collection=self.collection,
            idempotency_collection=self.idempotency_collection,
            suppression_collection=self.suppression_collection,
        )
