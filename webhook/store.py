"""The receiver's own SQLite file (WAL): one row per event id (dedupe, decisions, the spool) and used links.

The spool is not a separate queue: an accepted alert whose flow run could not be created yet is its row in
status `queued`, so accepting an alert and spooling it are one committed insert, and a restart loses nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.report import AlertEvent, as_utc

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    event_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    automation_level TEXT,
    qualified INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    flow_run_id TEXT,
    open_event_id TEXT,
    ended_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_account ON alerts (account_id, status);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status);
CREATE TABLE IF NOT EXISTS unsubscribes (
    token_hash TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    flow_run_id TEXT,
    received_at TEXT NOT NULL,
    applied_at TEXT
);
CREATE TABLE IF NOT EXISTS used_links (
    token_hash TEXT PRIMARY KEY,
    flow_run_id TEXT NOT NULL,
    wait TEXT NOT NULL,
    used_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inbound (
    message_id TEXT PRIMARY KEY,
    topic_arn TEXT NOT NULL,
    message TEXT NOT NULL,
    sent_at TEXT,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    flow_run_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inbound_status ON inbound (status);
"""

_COLUMNS = (
    "event_id, account_id, payload, automation_level, qualified, status, reason, detail, flow_run_id,"
    " open_event_id, ended_at, attempts, last_error, received_at, updated_at"
)
_INBOUND_COLUMNS = (
    "message_id, topic_arn, message, sent_at, status, detail, flow_run_id, attempts, received_at, updated_at"
)
_UPDATABLE = {"status", "reason", "detail", "flow_run_id", "open_event_id", "ended_at", "attempts", "last_error",
              "automation_level"}


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ReceiverStore:
    """Alerts by event id and used link tokens; safe for the event loop thread and the threadpool."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash; only an OS crash/power loss can drop the last ones
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"ReceiverStore({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- alerts ----

    def insert_alert(
        self, *, event_id: str, account_id: str, payload: str, automation_level: str | None, qualified: bool,
        status: str, reason: str | None = None, detail: str | None = None, attempts: int = 0,
        last_error: str | None = None,
    ) -> bool:
        """Record a new event id; False when the id was seen before (the primary key decides, atomically)."""
        now = _now()
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO alerts (event_id, account_id, payload, automation_level, qualified, status,"
                " reason, detail, attempts, last_error, received_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event_id, account_id, payload, automation_level, int(qualified), status, reason, detail, attempts,
                 last_error, now, now),
            )
        return cursor.rowcount == 1

    def get(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM alerts WHERE event_id=?", (event_id,)).fetchone()
        return dict(row) if row else None

    def update(self, event_id: str, **fields: Any) -> None:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        assignments = ", ".join(f"{name}=?" for name in fields)
        with self._lock:
            self._db.execute(
                f"UPDATE alerts SET {assignments}, updated_at=? WHERE event_id=?",
                (*fields.values(), _now(), event_id),
            )

    def open_upsells(self, account_id: str, exclude: str) -> list[dict[str, Any]]:
        """The account's started upsells whose run was not yet seen final (normally at most one)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM alerts WHERE account_id=? AND status='triggered' AND ended_at IS NULL"
                " AND event_id<>? ORDER BY rowid",
                (account_id, exclude),
            ).fetchall()
        return [dict(r) for r in rows]

    def last_ended_at(self, account_id: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(ended_at) FROM alerts WHERE account_id=? AND status='triggered'", (account_id,)
            ).fetchone()
        return row[0]

    def queued_before(self, account_id: str, event_id: str) -> bool:
        """Whether an earlier alert of the account waits in the spool (it must be decided first)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM alerts WHERE account_id=? AND status='queued'"
                " AND rowid < (SELECT rowid FROM alerts WHERE event_id=?) LIMIT 1",
                (account_id, event_id),
            ).fetchone()
        return row is not None

    def queued(self, limit: int = 500) -> list[dict[str, Any]]:
        """The spool, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM alerts WHERE status='queued' ORDER BY rowid LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in rows]

    def spool_depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM alerts WHERE status='queued'").fetchone()[0])

    def requeue_received(self, older_than_s: float = 0.0) -> int:
        """Spool every qualified alert left `received` (its run was being created when a process died, or the
        call hung) for longer than `older_than_s`; the replay finds its run by Prefect's idempotency key or
        creates it. Returns how many were requeued."""
        cutoff = datetime.fromtimestamp(datetime.now(UTC).timestamp() - older_than_s, UTC).isoformat()
        with self._lock:
            cursor = self._db.execute(
                "UPDATE alerts SET status='queued', attempts=attempts+1, updated_at=?,"
                " last_error='left undecided by an earlier receiver process; replayed'"
                " WHERE status='received' AND qualified=1 AND updated_at<=?",
                (_now(), cutoff),
            )
        return cursor.rowcount

    def alert_events(self, since: datetime | None = None) -> list[AlertEvent]:
        """The alerts received at or after `since` (all when None), oldest first: event id, when, and whether it
        qualified (the funnel report joins them with the logged upsells on the event id)."""
        query = "SELECT event_id, received_at, qualified FROM alerts"
        args: tuple[str, ...] = ()
        if since is not None:  # received_at is written in UTC (`_now`): ISO texts compare as the times do
            query, args = query + " WHERE received_at >= ?", (as_utc(since).isoformat(),)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY received_at", args).fetchall()
        return [AlertEvent(event_id=event_id, received_at=datetime.fromisoformat(received_at), qualified=bool(ok))
                for event_id, received_at, ok in rows]

    # ---- unsubscribes ----

    def record_unsubscribe(self, token_hash: str, email: str, flow_run_id: str) -> None:
        """Keep a one-click unsubscribe durably (once per token) until it is applied to the suppression list."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO unsubscribes (token_hash, email, flow_run_id, received_at) VALUES (?, ?, ?, ?)",
                (token_hash, email, flow_run_id, _now()),
            )

    def unsubscribed(self, email: str) -> bool:
        """Whether an unsubscribe of `email` was received (applied to the suppression list, or about to be)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM unsubscribes WHERE lower(email)=lower(?) LIMIT 1",
                                   (email.strip(),)).fetchone()
        return row is not None

    def pending_unsubscribes(self, limit: int = 500) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT token_hash, email, flow_run_id, received_at FROM unsubscribes WHERE applied_at IS NULL"
                " ORDER BY rowid LIMIT ?",
                (limit,),
            ).fetchall()
        return [dict(r) for r in rows]

    def mark_unsubscribe_applied(self, token_hash: str) -> None:
        with self._lock:
            self._db.execute("UPDATE unsubscribes SET applied_at=? WHERE token_hash=?", (_now(), token_hash))

    # ---- links ----

    def claim_link(self, token_hash: str, flow_run_id: str, wait: str) -> bool:
        """Mark a link token used; False when it already was (the unique key decides, before any resume)."""
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO used_links (token_hash, flow_run_id, wait, used_at) VALUES (?, ?, ?, ?)",
                    (token_hash, flow_run_id, wait, _now()),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def link_used(self, token_hash: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM used_links WHERE token_hash=?", (token_hash,)).fetchone()
        return row is not None

    def release_link(self, token_hash: str) -> None:
        """Un-use a token whose resume did not happen (the run was not waiting yet, or the API was down)."""
        with self._lock:
            self._db.execute("DELETE FROM used_links WHERE token_hash=?", (token_hash,))

    # ---- inbound SNS messages (SES receipts, bounces, complaints) ----

    def insert_inbound(self, *, message_id: str, topic_arn: str, message: str, sent_at: str | None = None) -> bool:
        """Keep a verified SNS notification as `received`; False when its MessageId was seen before (an SNS
        retry): the primary key decides, atomically, and the row already there is left as it is."""
        now = _now()
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO inbound (message_id, topic_arn, message, sent_at, status, received_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'received', ?, ?)",
                (message_id, topic_arn, message, sent_at, now, now),
            )
        return cursor.rowcount == 1

    def pending_inbound(self, limit: int = 100) -> list[dict[str, Any]]:
        """The notifications still `received` (not yet processed), oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_INBOUND_COLUMNS} FROM inbound WHERE status='received' ORDER BY rowid LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in rows]

    def mark_inbound(self, message_id: str, *, status: str, detail: str = "", flow_run_id: str | None = None,
                     attempts: int | None = None) -> None:
        """Record what became of a notification (`received` again: it stays pending). A flow run id once set, and
        the attempts counted so far, are kept when none is given."""
        with self._lock:
            self._db.execute(
                "UPDATE inbound SET status=?, detail=?, flow_run_id=COALESCE(?, flow_run_id),"
                " attempts=COALESCE(?, attempts), updated_at=? WHERE message_id=?",
                (status, detail, flow_run_id, attempts, _now(), message_id),
            )

    def inbound_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        """The notifications kept, newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_INBOUND_COLUMNS} FROM inbound ORDER BY rowid DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in rows]
