"""The funnel report outside the receiver: `load_report` reads the receiver's alerts and the logged
opportunities, and `report_command` is `upsell report`.

The report reads the receiver's SQLite file, so it runs where the receiver keeps it (`upsell up` and
`upsell serve` on one machine share the data folder). Its modules are imported when a report is asked for, so
that registering the command keeps `upsell --help` quick.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from flows.report import FunnelReport


def parse_since(text: str | None) -> date | None:
    """`--since YYYY-MM-DD` as a date (None when not given); a wrong spelling is a usage error."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date written YYYY-MM-DD", param_hint="--since") from None


def load_report(since: date | None) -> FunnelReport:
    """The funnel from `since` (midnight UTC; None: from the first record), read from the receiver's file and the
    opportunity store (the saved block's, or the local stand-in)."""
    from blocks.registry import resolve
    from flows.report import build_report, start_of
    from webhook.settings import ReceiverFiles
    from webhook.store import ReceiverStore

    settings = ReceiverFiles()
    start, notes = start_of(since), []
    if settings.receiver_db_path.exists():
        receiver = ReceiverStore(settings.receiver_db_path)
        try:
            alerts = receiver.alert_events(start)
        finally:
            receiver.close()
    else:  # no receiver ran with this data folder: the upsells are still counted, the alerts cannot be
        alerts = []
        notes.append(f"No receiver file at {settings.receiver_db_path}: alerts and qualified are not counted "
                     "(set UPSELL_RECEIVER_DB or UPSELL_DATA_DIR to the receiver's).")
    store = resolve("store", settings).client
    try:
        opportunities = store.opportunities_since(start)
    finally:
        store.close()
    return build_report(alerts, opportunities, since=since, notes=notes)


def render_report(since: date | None = None) -> str:
    """The report as `upsell report` prints it (since the default first week, when `since` is None)."""
    from datetime import UTC, datetime

    from flows.report import default_since, render_text

    return render_text(load_report(since or default_since(datetime.now(UTC).date())))


def report_command(
    since: Annotated[
        str | None,
        typer.Option(help="First day counted (YYYY-MM-DD, UTC); default: the Monday 11 weeks before this week's."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Print the upsell funnel (alerts to pipeline) by ISO week, playbook and variant, with the A/B test results."""
    from datetime import UTC, datetime

    from flows.report import default_since

    first_day = parse_since(since) or default_since(datetime.now(UTC).date())
    if as_json:
        typer.echo(load_report(first_day).model_dump_json(indent=2))
    else:
        typer.echo(render_report(first_day), nl=False)
