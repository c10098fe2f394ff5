"""The MongoDB opportunity store (pymongo), the production twin of the embedded SQLite store.

It stays inside the part of MongoDB that every compatible server implements: ids and references are
strings, no ObjectId filters, no `$lookup`, no compiled regexes, datetimes as BSON dates, results as
JSON-shaped subdocuments.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError

from flows.models import Opportunity
from tasks.interfaces import Claim

_CLAIMABLE = ("claimed", "done", "pending", "unknown")


def _now() -> datetime:
    return datetime.now(UTC)


def _json_shaped(value: dict[str, Any]) -> dict[str, Any]:
    # Only JSON types reach the database: the same result on SQLite and MongoDB, nothing BSON-specific.
    return json.loads(json.dumps(value, default=str))


class MongoStore:
    """Opportunities, idempotency records and suppressions in three MongoDB collections."""

    def __init__(
        self,
        client: MongoClient[dict[str, Any]],
        *,
        database: str = "upsell",
        collection: str = "opportunities",
        idempotency_collection: str = "idempotency_records",
        suppression_collection: str = "suppressions",
    ) -> None:
        self.client = client
        db = client[database]
        self.opportunities = db[collection]
        self.records = db[idempotency_collection]
        self.suppressions = db[suppression_collection]
        self._indexed = False
        self._index_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MongoStore({self.opportunities.database.name}.{self.opportunities.name})"

    def ensure_indexes(self) -> None:
        """Create the indexes (idempotent); called lazily before the first read or write, never at import."""
        if self._indexed:
            return
        with self._index_lock:
            if self._indexed:
                return
            self.opportunities.create_index([("event_id", ASCENDING)], unique=True, name="event_id_unique")
            self.opportunities.create_index(
                [("account_id", ASCENDING), ("created_at", DESCENDING)], name="account_created"
            )
            self.opportunities.create_index([("created_at", DESCENDING)], name="created_at")
            self.records.create_index(
                [("event_id", ASCENDING), ("step", ASCENDING)], unique=True, name="event_step_unique"
            )
            self.suppressions.create_index([("email", ASCENDING)], unique=True, name="email_unique")
            self._indexed = True

    # ---- idempotency records ----

    def claim(self, event_id: str, step: str) -> Claim:
        self.ensure_indexes()
        now = _now()
        try:
            self.records.insert_one(
                {
                    "_id": uuid.uuid4().hex,
                    "event_id": event_id,
                    "step": step,
                    "status": "pending",
                    "result": None,
                    "error": None,
                    "attempts": 1,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            return Claim(status="claimed")
        except DuplicateKeyError:
            pass  # someone claimed (event, step) before: look at what became of it
        for _ in range(5):  # a record may move released -> pending -> released between our two reads
            reclaimed = self.records.find_one_and_update(
                {"event_id": event_id, "step": step, "status": "released"},
                {"$set": {"status": "pending", "updated_at": _now()}, "$inc": {"attempts": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if reclaimed is not None:
                return Claim(status="claimed")
            existing = self.records.find_one({"event_id": event_id, "step": step})
            if existing is not None and existing["status"] in _CLAIMABLE:
                return Claim(status=existing["status"], result=existing.get("result"))
        raise RuntimeError(f"could not settle the claim of ({event_id}, {step})")

    def _set(self, event_id: str, step: str, changes: dict[str, Any]) -> None:
        self.ensure_indexes()
        self.records.update_one({"event_id": event_id, "step": step}, {"$set": {**changes, "updated_at": _now()}})

    def complete(self, event_id: str, step: str, result: dict[str, Any]) -> None:
        self._set(event_id, step, {"status": "done", "result": _json_shaped(result), "error": None})

    def release(self, event_id: str, step: str, error: str) -> None:
        self._set(event_id, step, {"status": "released", "error": error})

    def mark_unknown(self, event_id: str, step: str, error: str) -> None:
        self._set(event_id, step, {"status": "unknown", "error": error})

    def get_record(self, event_id: str, step: str) -> dict[str, Any] | None:
        self.ensure_indexes()
        doc = self.records.find_one({"event_id": event_id, "step": step})
        if doc is None:
            return None
        updated = doc.get("updated_at")
        return {
            "event_id": event_id,
            "step": step,
            "status": doc["status"],
            "result": doc.get("result"),
            "error": doc.get("error"),
            "attempts": int(doc.get("attempts", 1)),
            "updated_at": updated.isoformat() if isinstance(updated, datetime) else updated,
        }

    # ---- opportunities ----

    def upsert_opportunity(self, opportunity: Opportunity) -> None:
        self.ensure_indexes()
        document = opportunity.model_dump(mode="json")
        # Real datetimes (BSON dates), so that sorting and range queries work server-side.
        document["created_at"] = opportunity.created_at
        document["occurred_at"] = opportunity.occurred_at
        document["_id"] = opportunity.event_id
        self.opportunities.replace_one({"event_id": opportunity.event_id}, document, upsert=True)

    @staticmethod
    def _opportunity(doc: dict[str, Any]) -> Opportunity:
        doc.pop("_id", None)
        return Opportunity.model_validate(doc)

    def get_opportunity(self, event_id: str) -> Opportunity | None:
        self.ensure_indexes()
        doc = self.opportunities.find_one({"event_id": event_id})
        return self._opportunity(doc) if doc is not None else None

    def list_opportunities(self, account_id: str | None = None, limit: int = 100) -> list[Opportunity]:
        self.ensure_indexes()
        query = {} if account_id is None else {"account_id": account_id}
        cursor = self.opportunities.find(query).sort([("created_at", DESCENDING)]).limit(limit)
        return [self._opportunity(doc) for doc in cursor]

    # ---- suppressions ----

    def add_suppression(self, email: str, reason: str) -> None:
        self.ensure_indexes()
        address = email.strip().lower()
        try:
            self.suppressions.update_one(
                {"_id": address},
                {"$setOnInsert": {"email": address, "reason": reason, "created_at": _now()}},
                upsert=True,
            )
        except DuplicateKeyError:
            pass  # a concurrent upsert of the same address won: it is suppressed either way

    def is_suppressed(self, email: str) -> bool:
        self.ensure_indexes()
        return self.suppressions.find_one({"_id": email.strip().lower()}, {"_id": 1}) is not None

    def close(self) -> None:
        self.client.close()
