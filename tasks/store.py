"""The embedded opportunity store: SQLite, the default when no MongoDB block is saved."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.models import Opportunity
from tasks.interfaces import Claim

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


def _now() -> str:
    return datetime.now(UTC).isoformat()


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
                        (event_id, step, _now()),
                    )
                    answer = Claim(status="claimed")
                elif row[0] == "released":
                    self._db.execute(
                        "UPDATE idempotency SET status='pending', attempts=attempts+1, updated_at=?"
                        " WHERE event_id=? AND step=?",
                        (_now(), event_id, step),
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
                (status, result, error, _now(), event_id, step),
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

    def add_suppression(self, email: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO suppressions (email, reason, created_at) VALUES (?, ?, ?)",
                (email.strip().lower(), reason, _now()),
            )

    def is_suppressed(self, email: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM suppressions WHERE email=?", (email.strip().lower(),)).fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._db.close()
