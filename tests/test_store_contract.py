"""The opportunity-store contract, run against the embedded SQLite store and MongoStore on a real wire server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from bson import Decimal128, Int64, ObjectId
from bson.binary import Binary
from prefect import flow
from pydantic import SecretStr
from pymongo import MongoClient

from blocks.interfaces import OpportunityStore
from blocks.mongo import MongoOpportunityStore, MongoStore, SqliteOpportunityStore
from blocks.registry import resolve
from flows.models import AutomationLevel, CustomerReply, Opportunity, UpsellStatus
from tasks.log_opportunity import log_opportunity
from tasks.runtime.policy import configured
from tasks.runtime.settings import get_settings


@pytest.fixture(params=["sqlite", "mongo"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpportunityStore]:
    if request.param == "sqlite":
        opened: OpportunityStore = SqliteOpportunityStore(tmp_path / "upsell.db")
    else:
        uri = request.getfixturevalue("mongo_uri")
        client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        opened = MongoStore(client, database=f"upsell_{uuid.uuid4().hex}")  # a database per test
    try:
        yield opened
    finally:
        opened.close()


def _opportunity(event_id: str, account_id: str = "acct-1", **changes: Any) -> Opportunity:
    values: dict[str, Any] = {
        "opportunity_id": f"opp_{account_id}_{event_id}",
        "event_id": event_id,
        "account_id": account_id,
        "metric_type": "api_calls",
        "automation_level": AutomationLevel.FULL_AUTOMATION,
        "status": UpsellStatus.COMPLETED,
        "recommended_plan": "Enterprise",
        "estimated_value": 42000.0,
        "planner": "rule-based",
        "reply": CustomerReply.YES,
        "email_message_id": "msg-1",
        "flow_run_id": str(uuid.uuid4()),
        "occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        **changes,
    }
    return Opportunity(**values)


def _evt() -> str:
    return f"evt-{uuid.uuid4().hex[:12]}"


def test_claim_complete_then_already_done(store: OpportunityStore) -> None:
    event_id = _evt()
    assert store.claim(event_id, "send_email").status == "claimed"
    store.complete(event_id, "send_email", {"message_id": "m-1"})

    again = store.claim(event_id, "send_email")
    assert again.status == "done"
    assert again.result == {"message_id": "m-1"}
    record = store.get_record(event_id, "send_email")
    assert record is not None
    assert (record["status"], record["result"], record["attempts"]) == ("done", {"message_id": "m-1"}, 1)
    # Another step of the same event is independent.
    assert store.claim(event_id, "post_slack").status == "claimed"
    assert store.get_record(event_id, "never_claimed") is None


def test_release_lets_the_next_attempt_reclaim(store: OpportunityStore) -> None:
    event_id = _evt()
    assert store.claim(event_id, "send_email").status == "claimed"
    store.release(event_id, "send_email", "HTTP 500 from the provider")
    record = store.get_record(event_id, "send_email")
    assert record is not None and record["status"] == "released"
    assert record["error"] == "HTTP 500 from the provider"

    assert store.claim(event_id, "send_email").status == "claimed"
    record = store.get_record(event_id, "send_email")
    assert record is not None
    assert (record["status"], record["attempts"]) == ("pending", 2)


def test_pending_claim_is_reported_and_can_be_marked_unknown(store: OpportunityStore) -> None:
    event_id = _evt()
    assert store.claim(event_id, "send_email").status == "claimed"
    # A second claimer while the first never finished (crash): it must not run the step.
    assert store.claim(event_id, "send_email").status == "pending"
    store.mark_unknown(event_id, "send_email", "read timeout after the request went out")
    assert store.claim(event_id, "send_email").status == "unknown"
    record = store.get_record(event_id, "send_email")
    assert record is not None and record["error"] == "read timeout after the request went out"


def test_concurrent_claims_let_exactly_one_caller_through(store: OpportunityStore) -> None:
    event_id = _evt()
    barrier = threading.Barrier(8)
    answers: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claim() -> None:
        try:
            barrier.wait(timeout=10)
            status = store.claim(event_id, "send_email").status
            with lock:
                answers.append(status)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert sorted(answers) == ["claimed"] + ["pending"] * 7


def test_upserting_the_same_event_twice_keeps_one_document(store: OpportunityStore) -> None:
    event_id = _evt()
    account = f"acct-{uuid.uuid4().hex[:8]}"
    store.upsert_opportunity(_opportunity(event_id, account, status=UpsellStatus.NEEDS_REVIEW, reply="maybe"))
    store.upsert_opportunity(_opportunity(event_id, account, meeting_join_url="https://zoom.example/j/1"))

    listed = store.list_opportunities(account)
    assert len(listed) == 1
    saved = store.get_opportunity(event_id)
    assert saved is not None
    assert saved.status == UpsellStatus.COMPLETED
    assert saved.reply == CustomerReply.YES
    assert saved.meeting_join_url == "https://zoom.example/j/1"
    assert saved.automation_level == AutomationLevel.FULL_AUTOMATION
    assert saved.occurred_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert saved.created_at.tzinfo is not None
    assert store.get_opportunity(_evt()) is None


def test_list_by_account_newest_first_with_limit(store: OpportunityStore) -> None:
    account, other = f"acct-{uuid.uuid4().hex[:8]}", f"acct-{uuid.uuid4().hex[:8]}"
    start = datetime(2026, 3, 1, tzinfo=UTC)
    ids = [_evt() for _ in range(4)]
    for offset, event_id in zip([2, 0, 3, 1], ids, strict=True):  # inserted out of time order
        store.upsert_opportunity(_opportunity(event_id, account, created_at=start + timedelta(hours=offset)))
    store.upsert_opportunity(_opportunity(_evt(), other))

    listed = store.list_opportunities(account)
    assert [o.event_id for o in listed] == [ids[2], ids[0], ids[3], ids[1]]
    assert [o.created_at for o in listed] == sorted((o.created_at for o in listed), reverse=True)
    assert [o.event_id for o in store.list_opportunities(account, limit=2)] == [ids[2], ids[0]]
    assert {o.account_id for o in store.list_opportunities(other)} == {other}


def test_opportunities_since_returns_those_logged_from_then_oldest_first(store: OpportunityStore) -> None:
    start = datetime(2026, 4, 6, tzinfo=UTC)
    later, before, at_start, naive = _evt(), _evt(), _evt(), _evt()
    store.upsert_opportunity(_opportunity(later, created_at=start + timedelta(days=3)))
    store.upsert_opportunity(_opportunity(before, created_at=start - timedelta(seconds=1)))
    # the same moment as `start`, written with another offset (its text sorts before the start's day)
    store.upsert_opportunity(_opportunity(at_start, created_at=start.astimezone(timezone(timedelta(hours=-5)))))
    store.upsert_opportunity(_opportunity(naive, created_at=datetime(2026, 4, 7, 12)))  # naive: taken as UTC

    assert [o.event_id for o in store.opportunities_since(start)] == [at_start, naive, later]
    assert [o.event_id for o in store.opportunities_since(None)] == [before, at_start, naive, later]
    assert [o.event_id for o in store.opportunities_since(start + timedelta(days=1, hours=13))] == [later]
    assert [o.event_id for o in store.opportunities_since(datetime(2026, 4, 6))] == [at_start, naive, later]
    assert store.opportunities_since(start + timedelta(days=4)) == []
    found = store.opportunities_since(start)[-1]
    assert (found.playbook, found.reply, found.email_message_id) == ("default", CustomerReply.YES, "msg-1")


def test_suppression_is_case_insensitive_and_idempotent(store: OpportunityStore) -> None:
    address = f"Buyer.{uuid.uuid4().hex[:8]}@Example.com"
    assert not store.is_suppressed(address)
    store.add_suppression(address, "unsubscribe link")
    store.add_suppression(address.upper(), "unsubscribe link again")
    assert store.is_suppressed(address.lower())
    assert store.is_suppressed(f"  {address}  ")
    assert not store.is_suppressed(f"someone-else-{uuid.uuid4().hex[:6]}@example.com")


# ---- MongoDB only: the store must stay inside what every MongoDB-compatible server implements ----

_OUTSIDE_SUBSET = (ObjectId, Int64, Decimal128, Binary, uuid.UUID, bytes)


def _foreign_values(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [hit for key, item in value.items() for hit in _foreign_values(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [hit for i, item in enumerate(value) for hit in _foreign_values(item, f"{path}[{i}]")]
    return [f"{path}: {type(value).__name__}"] if isinstance(value, _OUTSIDE_SUBSET) else []


def test_mongo_documents_stay_inside_the_portable_subset(mongo_uri: str) -> None:
    """Fails loudly if the store starts to rely on ObjectId references, Int64, Decimal128 or binary UUIDs."""
    database = f"upsell_{uuid.uuid4().hex}"
    with MongoClient(mongo_uri, tz_aware=True) as client:
        store = MongoStore(client, database=database)
        event_id = _evt()
        store.claim(event_id, "send_email")
        store.complete(event_id, "send_email", {"message_id": "m-1", "sent_at": datetime.now(UTC)})
        store.claim(event_id, "post_slack")
        store.release(event_id, "post_slack", "boom")
        store.upsert_opportunity(_opportunity(event_id))
        store.add_suppression("x@example.com", "test")

        db = client[database]
        for name in ("opportunities", "idempotency_records", "suppressions"):
            documents = list(db[name].find({}))
            assert documents, f"nothing written to {name}"
            for document in documents:
                assert isinstance(document["_id"], str), f"{name} _id is {type(document['_id']).__name__}"
                assert _foreign_values(document) == [], f"{name} holds non-portable values"
        opportunity = db["opportunities"].find_one({"event_id": event_id})
        assert opportunity is not None
        assert isinstance(opportunity["created_at"], datetime)  # a BSON date, so the server can sort it
        assert opportunity["flow_run_id"] == str(uuid.UUID(opportunity["flow_run_id"]))  # UUIDs as strings
        record = db["idempotency_records"].find_one({"event_id": event_id, "step": "send_email"})
        assert record is not None and isinstance(record["result"]["sent_at"], str)  # results are JSON-shaped

        # The unique keys the send-once guarantee rests on (checked by fields: servers name indexes their own way).
        assert ["event_id"] in _unique_keys(db["opportunities"])
        assert ["event_id", "step"] in _unique_keys(db["idempotency_records"])
        assert {"account_id", "created_at"} in [set(k) for k in _index_keys(db["opportunities"])]


def _index_keys(collection: Any) -> list[list[str]]:
    return [[field for field, _ in info["key"]] for info in collection.index_information().values()]


def _unique_keys(collection: Any) -> list[list[str]]:
    return [
        [field for field, _ in info["key"]] for info in collection.index_information().values() if info.get("unique")
    ]


# ---- the block, through the task that logs opportunities ----


@flow(name="log-opportunity-check")
def _log_flow(opportunity: Opportunity) -> str:
    """Run the real log_opportunity task inside a flow run."""
    return configured(log_opportunity)(opportunity)


def test_log_opportunity_task_upserts_into_mongo_through_the_block(mongo_uri: str) -> None:
    database = f"upsell_{uuid.uuid4().hex}"
    MongoOpportunityStore(uri=SecretStr(mongo_uri), database=database).save("upsell-mongo", overwrite=True)
    try:
        resolved = resolve("store", get_settings())
        resolved.client.close()
        assert not resolved.standin and isinstance(resolved.client, MongoStore)
        event_id = _evt()
        _log_flow(_opportunity(event_id, status=UpsellStatus.NEEDS_REVIEW))
        _log_flow(_opportunity(event_id))  # a retried or re-run log step
    finally:
        MongoOpportunityStore.delete("upsell-mongo")

    with MongoClient(mongo_uri) as client:
        documents = list(client[database]["opportunities"].find({"event_id": event_id}))
    assert len(documents) == 1
    assert documents[0]["status"] == "completed" and documents[0]["_id"] == event_id
