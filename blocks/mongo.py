"""Block for the MongoDB opportunity store."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError

from blocks.interfaces import Claim
from blocks.limits import request_timeout
from flows.models import Opportunity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS opportunities (
    event_id TEXT PRIMARY KEY,
    opportunity_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS opportunities_account ON opportunities (account_id, created_at);
CREATE TABLE IF NOT EXISTS idempotency (
    event_id TEXT NOT NULL,
    step TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (event_id, step)
);
CREATE TABLE IF NOT EXISTS suppressions (
    email TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


def _now_text() -> str:
    return datetime.now(UTC).isoformat()


def _utc(moment: datetime) -> datetime:
    """The moment in UTC; a naive one is taken as UTC (how the stores write times)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


class SqliteOpportunityStore:
    """Opportunities and idempotency records in one SQLite file (WAL, safe across processes)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteOpportunityStore({str(self.path)!r})"

    def claim(self, event_id: str, step: str) -> Claim:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT status, result FROM idempotency WHERE event_id=? AND step=?", (event_id, step)
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO idempotency (event_id, step, status, updated_at) VALUES (?, ?, 'pending', ?)",
                        (event_id, step, _now_text()),
                    )
                    answer = Claim(status="claimed")
                elif row[0] == "released":
                    self._db.execute(
                        "UPDATE idempotency SET status='pending', attempts=attempts+1, updated_at=?"
                        " WHERE event_id=? AND step=?",
                        (_now_text(), event_id, step),
                    )
                    answer = Claim(status="claimed")
                else:
                    answer = Claim(status=row[0], result=json.loads(row[1]) if row[1] else None)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return answer

    def _set(self, event_id: str, step: str, status: str, result: str | None, error: str | None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE idempotency SET status=?, result=COALESCE(?, result), error=?, updated_at=?"
                " WHERE event_id=? AND step=?",
                (status, result, error, _now_text(), event_id, step),
            )

    def complete(self, event_id: str, step: str, result: dict[str, Any]) -> None:
        self._set(event_id, step, "done", json.dumps(result, default=str), None)

    def release(self, event_id: str, step: str, error: str) -> None:
        self._set(event_id, step, "released", None, error)

    def mark_unknown(self, event_id: str, step: str, error: str) -> None:
        self._set(event_id, step, "unknown", None, error)

    def get_record(self, event_id: str, step: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status, result, error, attempts, updated_at FROM idempotency WHERE event_id=? AND step=?",
                (event_id, step),
            ).fetchone()
        if row is None:
            return None
        return {
            "event_id": event_id,
            "step": step,
            "status": row[0],
            "result": json.loads(row[1]) if row[1] else None,
            "error": row[2],
            "attempts": row[3],
            "updated_at": row[4],
        }

    def upsert_opportunity(self, opportunity: Opportunity) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO opportunities (event_id, opportunity_id, account_id, created_at, document)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(event_id) DO UPDATE SET document=excluded.document,"
                " opportunity_id=excluded.opportunity_id",
                (
                    opportunity.event_id,
                    opportunity.opportunity_id,
                    opportunity.account_id,
                    opportunity.created_at.isoformat(),
                    opportunity.model_dump_json(),
                ),
            )

    def get_opportunity(self, event_id: str) -> Opportunity | None:
        with self._lock:
            row = self._db.execute("SELECT document FROM opportunities WHERE event_id=?", (event_id,)).fetchone()
        return Opportunity.model_validate_json(row[0]) if row else None

    def list_opportunities(self, account_id: str | None = None, limit: int = 100) -> list[Opportunity]:
        query = "SELECT document FROM opportunities"
        args: tuple[Any, ...] = ()
        if account_id is not None:
            query += " WHERE account_id=?"
            args = (account_id,)
        query += " ORDER BY created_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [Opportunity.model_validate_json(r[0]) for r in rows]

    def opportunities_since(self, since: datetime | None) -> list[Opportunity]:
        query = "SELECT document FROM opportunities"
        args: tuple[str, ...] = ()
        if since is not None:
            # the column holds created_at as it was written (ISO text, whatever its offset): the text comparison
            # gets a day's margin (more than any offset), the exact bound is applied to the parsed times
            query, args = query + " WHERE created_at >= ?", ((_utc(since) - timedelta(days=1)).isoformat(),)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        found = [Opportunity.model_validate_json(r[0]) for r in rows]
        return sorted(
            (o for o in found if since is None or _utc(o.created_at) >= _utc(since)), key=lambda o: _utc(o.created_at)
        )

    def add_suppression(self, email: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO suppressions (email, reason, created_at) VALUES (?, ?, ?)",
                (email.strip().lower(), reason, _now_text()),
            )

    def is_suppressed(self, email: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM suppressions WHERE email=?", (email.strip().lower(),)).fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._db.close()


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

    def opportunities_since(self, since: datetime | None) -> list[Opportunity]:
        self.ensure_indexes()
        query = {} if since is None else {"created_at": {"$gte": _utc(since)}}  # a BSON date range (indexed)
        cursor = self.opportunities.find(query).sort([("created_at", ASCENDING)])
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
