"""Which decisions each automation level asks a human for, and at which point of the upsell: one table.

The flow asks `asks(level, checkpoint)` at each checkpoint instead of branching on the level; a new automation
level is a new member of `AutomationLevel` and a new row of `APPROVALS`. The customer's reply is not in the
table: every level waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from flows.models import WAIT_INPUTS, AutomationLevel, OpportunityReview, WaitKind


class Checkpoint(StrEnum):
    """A point of the upsell where a level may wait for a human's decision; the value is the wait's key."""

    BEFORE_EMAIL = "approve-email"  # approve (and edit) the email before it is sent
    AFTER_REPLY = "review"  # approve the upsell once the customer replied, before the meeting and the log
    BEFORE_MEETING = "approve-meeting"  # approve booking the meeting (asked only when the customer said yes)
    BEFORE_LOG = "approve-opportunity"  # approve the opportunity, and its value, before it is logged

    @property
    def wait(self) -> WaitKind:
        """The key the run pauses under (flows.models.WAIT_INPUTS holds its input type)."""
        return cast(WaitKind, self.value)


@dataclass(frozen=True)
class Approvals:
    """The decisions one automation level asks for."""

    asks: frozenset[Checkpoint] = frozenset()
    #: The checkpoint the approve/reject links of the Slack summary answer (an OpportunityReview); None: no links.
    slack_decides: Checkpoint | None = None
    #: The level the run goes on at when the Slack summary fails the safety check (None: it stays at this one).
    if_summary_withheld: AutomationLevel | None = None


APPROVALS: dict[AutomationLevel, Approvals] = {
    AutomationLevel.FULL_AUTOMATION: Approvals(
        asks=frozenset(),
        if_summary_withheld=AutomationLevel.HYBRID,  # a withheld summary: a human reviews before the final steps
    ),
    AutomationLevel.HYBRID: Approvals(
        asks=frozenset({Checkpoint.AFTER_REPLY}),
        slack_decides=Checkpoint.AFTER_REPLY,
    ),
    AutomationLevel.HUMAN_INTERVENTION: Approvals(
        asks=frozenset({Checkpoint.BEFORE_EMAIL, Checkpoint.BEFORE_MEETING, Checkpoint.BEFORE_LOG}),
        slack_decides=Checkpoint.BEFORE_LOG,
    ),
}


def _check(table: dict[AutomationLevel, Approvals]) -> None:
    """A level without a row, or Slack links answering a wait the level does not ask for (or one that does not
    take an OpportunityReview), is a mistake in this file: say so on import rather than in the middle of a run."""
    if missing := set(AutomationLevel) - set(table):
        raise RuntimeError(f"flows/approvals.py: no APPROVALS row for {sorted(missing)}")
    for level, row in table.items():
        links = row.slack_decides
        if links is not None and (links not in row.asks or WAIT_INPUTS[links.wait] is not OpportunityReview):
            raise RuntimeError(f"flows/approvals.py: {level}: Slack links cannot answer {links.wait!r}")


_check(APPROVALS)


def asks(level: AutomationLevel, checkpoint: Checkpoint) -> bool:
    """Whether a run at `level` waits for a human's decision at `checkpoint`."""
    return checkpoint in APPROVALS[level].asks


def slack_decides(level: AutomationLevel) -> Checkpoint | None:
    """The checkpoint the Slack summary's approve/reject links answer at `level` (None: the summary has none)."""
    return APPROVALS[level].slack_decides


def after_withheld_summary(level: AutomationLevel) -> AutomationLevel:
    """The level a run at `level` goes on at once its Slack summary failed the safety check."""
    return APPROVALS[level].if_summary_withheld or level
