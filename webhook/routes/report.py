"""`GET /report`: the funnel report as a page with its charts, for the people who hold the report's credentials
(a bearer token or a user name and password from the settings; without any configured, it is not served)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from flows.report import build_report, default_since, start_of
from webhook.deps import OpportunityStoreDep, StoreDep, require_report_access
from webhook.models import Refused
from webhook.report_page import report_page

logger = logging.getLogger("upsell.receiver")
#: Not in /openapi.json: a page for people (like /docs), behind its own credentials, not an API operation.
router = APIRouter(include_in_schema=False)


@router.get("/report", dependencies=[Depends(require_report_access)])
def funnel_report(store: StoreDep, opportunities: OpportunityStoreDep, since: date | None = None) -> HTMLResponse:
    """The funnel from `since` (default: the last 12 ISO weeks): alerts to pipeline, by week, playbook and variant."""
    first_day = since or default_since(datetime.now(UTC).date())
    try:
        logged = opportunities.opportunities_since(start_of(first_day))
    except Exception as exc:  # answered as unavailable on purpose: the store is away, the receiver is fine
        logger.warning("Funnel report: the opportunity store could not be read (%s: %s)", type(exc).__name__, exc)
        raise Refused(503, "store_unavailable", "The opportunity store could not be read. Try again later.") from exc
    report = build_report(store.alert_events(start_of(first_day)), logged, since=first_day)
    return report_page(report)
