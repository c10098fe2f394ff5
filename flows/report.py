"""The funnel report of upsells: alerts in, qualified, emailed, the customers' answers, meetings and pipeline value,
by ISO week, by playbook and by A/B variant, with each variant's rates and a test between the variants of a playbook.

Pure: the callers read the receiver's alerts and the logged opportunities and hand them in; the renderers here
write the report for a terminal and as Markdown (a Prefect artifact). The receiver draws it as an HTML page.

Every upsell that ends logs its record, whatever its ending (rejected, withheld, bounced, ...), so the funnel counts
what happened. Each stage is counted over the events of the stage above it, one event id once: an upsell logged for
an alert the receiver never saw (triggered from the CLI or the Python API) is an alert, and a qualified one, too.
So no stage can exceed the one above it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import combinations
from typing import Any, Literal

from pydantic import BaseModel, Field

from flows.models import CustomerReply, Opportunity, UpsellStatus

#: ISO weeks covered when no start is given: the current week and the eleven before it.
DEFAULT_WEEKS = 12
#: Fewer emailed upsells than this in a variant, and no winner is called.
MIN_EMAILED = 30
#: An expected count (of either outcome, in either variant) below this, and the z-test's normal approximation fails.
MIN_EXPECTED = 5.0
CONFIDENCE = 0.95
ALPHA = 0.05
#: How the variant of an upsell outside any experiment reads.
NO_VARIANT = "(none)"

Metric = Literal["yes", "meeting"]
METRIC_NAMES: dict[Metric, str] = {"yes": "yes-rate", "meeting": "meeting-rate"}


class AlertEvent(BaseModel):
    """An alert the receiver took in: its event id, when it arrived, and whether it qualified for an upsell."""

    event_id: str
    received_at: datetime
    qualified: bool


class Funnel(BaseModel):
    """One slice of the logged upsells: how many were emailed, what the emailed customers answered (each emailed
    upsell counts once: yes, no, maybe or no answer), the meetings booked with them, and the pipeline (the estimated
    value of the upsells answered yes that a reviewer did not reject)."""

    opportunities: int = 0
    emailed: int = 0
    yes: int = 0
    no: int = 0
    maybe: int = 0
    no_reply: int = 0
    meetings: int = 0
    pipeline_value: float = 0.0


class WeekRow(Funnel):
    """The funnel of one ISO week, from the alerts received to the pipeline."""

    week: str
    alerts: int = 0
    qualified: int = 0


class PlaybookRow(Funnel):
    """The funnel of one playbook."""

    playbook: str


class Rate(BaseModel):
    """A proportion and its 95 % Wilson interval (all None when nothing was counted)."""

    successes: int
    trials: int
    rate: float | None = None
    low: float | None = None
    high: float | None = None


class VariantRow(Funnel):
    """The funnel of one variant of a playbook ('' outside an experiment), with its rates over the emailed."""

    playbook: str
    variant: str
    yes_rate: Rate
    meeting_rate: Rate


class VariantTest(BaseModel):
    """A two-proportion z-test of one rate between two variants of a playbook, and what it allows one to say."""

    playbook: str
    metric: Metric
    variants: tuple[str, str]
    too_small: bool
    z: float | None = None
    p_value: float | None = Field(default=None, description="Two-sided; None when the sample is too small.")
    alpha: float = Field(default=ALPHA, description="The level it is judged at: 0.05 over the playbook's pairs.")
    leader: str | None = Field(default=None, description="The variant ahead, when the difference is significant.")
    verdict: str


class FunnelReport(BaseModel):
    """The whole report: totals, and the funnel by ISO week, playbook and variant, with the variant tests."""

    generated_at: datetime
    since: date | None
    alerts: int
    qualified: int
    alerts_elsewhere: int = Field(
        default=0, description="Of the alerts, those the receiver never saw: upsells triggered from the CLI or the "
        "Python API (counted from their logged record).",
    )
    total: Funnel
    weeks: list[WeekRow]
    playbooks: list[PlaybookRow]
    variants: list[VariantRow]
    tests: list[VariantTest]
    notes: list[str] = Field(default_factory=list)


# ---- time ----


def as_utc(moment: datetime) -> datetime:
    """The moment in UTC (a naive one is taken as UTC, as the stores write them)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso_week(day: date) -> str:
    """`2026-W03`: the ISO week of a day (of a moment's UTC day)."""
    if isinstance(day, datetime):
        day = as_utc(day).date()
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def week_monday(week: str) -> date:
    """The Monday that starts an ISO week written as `iso_week` writes it."""
    year, number = week.split("-W")
    return date.fromisocalendar(int(year), int(number), 1)


def default_since(today: date, weeks: int = DEFAULT_WEEKS) -> date:
    """The Monday starting the earliest of the last `weeks` ISO weeks (this week included)."""
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    return today - timedelta(days=today.weekday() + 7 * (weeks - 1))


def start_of(since: date | None) -> datetime | None:
    """Midnight UTC of the report's first day (None: from the beginning)."""
    return datetime.combine(since, time(), tzinfo=UTC) if since is not None else None


def counted_at(opportunity: Opportunity) -> datetime:
    """When an upsell counts: when its alert occurred (the week the alert is counted in), else when it was logged."""
    return as_utc(opportunity.occurred_at or opportunity.created_at)


# ---- counting ----


def count_funnel(opportunities: Iterable[Opportunity]) -> Funnel:
    """The funnel of some upsells: answers, meetings and pipeline are counted over the emailed ones."""
    logged = list(opportunities)
    emailed = [o for o in logged if o.email_message_id is not None]
    answers = {reply: sum(1 for o in emailed if o.reply == reply) for reply in CustomerReply}
    return Funnel(
        opportunities=len(logged),
        emailed=len(emailed),
        yes=answers[CustomerReply.YES],
        no=answers[CustomerReply.NO],
        maybe=answers[CustomerReply.MAYBE],
        no_reply=answers[CustomerReply.NO_REPLY],
        meetings=sum(1 for o in emailed if o.meeting_join_url is not None),
        pipeline_value=sum(o.estimated_value for o in emailed
                           if o.reply == CustomerReply.YES and o.status is not UpsellStatus.REJECTED),
    )


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> Rate:
    """`successes` of `trials` with its Wilson score interval (scipy's `binomtest(...).proportion_ci`)."""
    if trials == 0:
        return Rate(successes=0, trials=0)
    from scipy.stats import binomtest  # about a second to import: paid by the report only, not by every importer

    interval = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return Rate(successes=successes, trials=trials, rate=successes / trials, low=float(interval.low),
                high=float(interval.high))


def two_proportion_z(first: Rate, second: Rate) -> tuple[float, float]:
    """The pooled two-proportion z statistic of `first` - `second` and its two-sided p-value."""
    from scipy.stats import norm  # see `wilson`

    pooled = (first.successes + second.successes) / (first.trials + second.trials)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / first.trials + 1 / second.trials))
    if spread == 0:  # both all successes or all failures: no difference to see
        return 0.0, 1.0
    z = (first.successes / first.trials - second.successes / second.trials) / spread
    return z, float(2 * norm.sf(abs(z)))


def too_small(names: Sequence[str], rates: Sequence[Rate], metric: Metric) -> str:
    """Why these two variants' rates are too few to call a winner on ('' when they are enough)."""
    for name, rate in zip(names, rates, strict=True):
        if rate.trials < MIN_EMAILED:
            return f"{name} has {rate.trials} emailed (at least {MIN_EMAILED} per variant needed)"
    pooled = sum(r.successes for r in rates) / sum(r.trials for r in rates)
    outcome = "yes" if metric == "yes" else "meeting"
    expected, label, name = min(
        (rate.trials * share, label, name)
        for name, rate in zip(names, rates, strict=True)
        for share, label in ((pooled, outcome), (1 - pooled, f"no-{outcome}"))
    )
    if expected < MIN_EXPECTED:
        return f"{name}'s expected {label} count is {expected:.1f} (at least {MIN_EXPECTED:g} needed)"
    return ""


def format_p(p_value: float) -> str:
    """`p=0.028`, or `p<0.001`."""
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"


def variant_name(variant: str) -> str:
    """A variant as people read it: `(none)` outside an experiment."""
    return variant or NO_VARIANT


def compare(playbook: str, metric: Metric, first: VariantRow, second: VariantRow, pairs: int) -> VariantTest:
    """The test of `metric` between two variants of `playbook` (one of `pairs` tests: Bonferroni's level)."""
    rates = [row.yes_rate if metric == "yes" else row.meeting_rate for row in (first, second)]
    names = (first.variant, second.variant)
    alpha = ALPHA / pairs
    small = too_small(names, rates, metric)
    if small:
        return VariantTest(playbook=playbook, metric=metric, variants=names, too_small=True, alpha=alpha,
                           verdict=f"Too small to call a winner: {small}.")
    z, p_value = two_proportion_z(rates[0], rates[1])
    shown = format_p(p_value) + (f"; {pairs} pairs, judged at {alpha:.3f}" if pairs > 1 else "")
    test = VariantTest(playbook=playbook, metric=metric, variants=names, too_small=False, z=z, p_value=p_value,
                       alpha=alpha, verdict=f"No significant difference ({shown}).")
    if p_value < alpha:
        leader = names[0] if z > 0 else names[1]
        test.leader, test.verdict = leader, f"{leader} leads ({shown})."
    return test


def variant_tests(rows: Sequence[VariantRow]) -> list[VariantTest]:
    """Every pair of variants within each playbook in an experiment, on the yes-rate and the meeting-rate."""
    by_playbook: dict[str, list[VariantRow]] = defaultdict(list)
    for row in rows:
        if row.variant:
            by_playbook[row.playbook].append(row)
    tests = []
    for playbook, variants in sorted(by_playbook.items()):
        pairs = list(combinations(variants, 2))
        for metric in METRIC_NAMES:
            tests += [compare(playbook, metric, first, second, len(pairs)) for first, second in pairs]
    return tests


def variant_row(playbook: str, variant: str, opportunities: Sequence[Opportunity]) -> VariantRow:
    """The funnel of one variant, with its yes-rate and meeting-rate over its emailed upsells."""
    funnel = count_funnel(opportunities)
    return VariantRow(
        **funnel.model_dump(), playbook=playbook, variant=variant,
        yes_rate=wilson(funnel.yes, funnel.emailed), meeting_rate=wilson(funnel.meetings, funnel.emailed),
    )


@dataclass(frozen=True)
class Event:
    """One event id of the period: the week it counts in, whether it qualified, and its logged upsell if any."""

    week: str
    qualified: bool
    upsell: Opportunity | None = None
    elsewhere: bool = False


def merge_events(alerts: Iterable[AlertEvent], upsells: Sequence[Opportunity], start: datetime | None) -> list[Event]:
    """The events of the period, one per event id: the receiver's alerts and the logged upsells joined on the event
    id. An upsell counts in the week its alert occurred and makes its event qualified; an upsell the receiver never
    saw (the CLI, the Python API) is an alert of its own. So qualified <= alerts and logged <= qualified, per week."""
    received = {a.event_id: a for a in alerts if start is None or as_utc(a.received_at) >= start}
    events = [Event(iso_week(counted_at(o)), True, o, o.event_id not in received) for o in upsells]
    logged = {o.event_id for o in upsells}
    events += [Event(iso_week(a.received_at), a.qualified) for a in received.values() if a.event_id not in logged]
    return events


def week_rows(events: Sequence[Event], now: datetime) -> list[WeekRow]:
    """One row per ISO week from the first with data to the current one: a quiet week shows, as zeros."""
    grouped: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        grouped[event.week].append(event)
    mondays = sorted(week_monday(week) for week in grouped)
    if not mondays:
        return []
    rows, monday = [], mondays[0]
    while monday <= max(mondays[-1], week_monday(iso_week(now))):
        week = iso_week(monday)
        these = grouped[week]
        upsells = [e.upsell for e in these if e.upsell is not None]
        rows.append(WeekRow(**count_funnel(upsells).model_dump(), week=week, alerts=len(these),
                            qualified=sum(1 for e in these if e.qualified)))
        monday += timedelta(days=7)
    return rows


def build_report(
    alerts: Iterable[AlertEvent],
    opportunities: Iterable[Opportunity],
    *,
    since: date | None,
    now: datetime | None = None,
    notes: Sequence[str] = (),
) -> FunnelReport:
    """The funnel report of the alerts and upsells from `since` on (an upsell counts from when its alert occurred;
    an alert the receiver took in, from when it arrived)."""
    start, now = start_of(since), as_utc(now or datetime.now(UTC))
    latest: dict[str, Opportunity] = {}
    for opportunity in opportunities:  # one record per event id (a store keys them so; a second would count twice)
        if start is None or counted_at(opportunity) >= start:
            latest[opportunity.event_id] = opportunity
    counted = sorted(latest.values(), key=counted_at)
    events = merge_events(alerts, counted, start)
    weeks = week_rows(events, now)
    by_playbook: dict[str, list[Opportunity]] = defaultdict(list)
    by_variant: dict[tuple[str, str], list[Opportunity]] = defaultdict(list)
    for opportunity in counted:
        by_playbook[opportunity.playbook].append(opportunity)
        by_variant[opportunity.playbook, opportunity.variant].append(opportunity)
    variants = [variant_row(playbook, variant, rows) for (playbook, variant), rows in sorted(by_variant.items())]
    return FunnelReport(
        generated_at=now,
        since=since,
        alerts=len(events),
        qualified=sum(1 for e in events if e.qualified),
        alerts_elsewhere=sum(1 for e in events if e.elsewhere),
        total=count_funnel(counted),
        weeks=weeks,
        playbooks=[PlaybookRow(**count_funnel(rows).model_dump(), playbook=name)
                   for name, rows in sorted(by_playbook.items())],
        variants=variants,
        tests=variant_tests(variants),
        notes=[*notes, *elsewhere_note(events)],
    )


def elsewhere_note(events: Sequence[Event]) -> list[str]:
    """The sentence saying how many alerts came from outside the receiver (none when all came through it)."""
    count = sum(1 for e in events if e.elsewhere)
    if not count:
        return []
    return [f"{count} of the alerts were triggered outside the receiver (the CLI or the Python API): each is counted "
            "from its logged upsell."]


# ---- presentation, shared by the renderers (here and the receiver's page) ----


@dataclass(frozen=True)
class Stage:
    """One bar of the funnel: its count, and the stage it is a share of (None for the first)."""

    label: str
    count: int
    of: Stage | None = None

    @property
    def share(self) -> float | None:
        return self.count / self.of.count if self.of is not None and self.of.count else None


def funnel_stages(report: FunnelReport) -> list[Stage]:
    """Alerts -> qualified -> logged -> emailed -> each answer -> meetings; the answers and meetings of the emailed."""
    alerts = Stage("Alerts", report.alerts)
    qualified = Stage("Qualified", report.qualified, alerts)
    logged = Stage("Upsells logged", report.total.opportunities, qualified)
    emailed = Stage("Emailed", report.total.emailed, logged)
    total = report.total
    answers = [Stage(label, count, emailed) for label, count in (
        ("Answered yes", total.yes), ("Answered no", total.no), ("Answered maybe", total.maybe),
        ("No answer", total.no_reply), ("Meetings", total.meetings))]
    return [alerts, qualified, logged, emailed, *answers]


def money(value: float) -> str:
    """`$3,500`."""
    return f"${value:,.0f}"


def percent(value: float | None) -> str:
    """`40.0%`; `-` when there is no value."""
    return "-" if value is None else f"{value:.1%}"


def rate_text(rate: Rate) -> str:
    """`24.0% [13.1%, 38.2%] (12/50)`; `-` when nothing was emailed."""
    if rate.rate is None:
        return "-"
    return f"{rate.rate:.1%} [{percent(rate.low)}, {percent(rate.high)}] ({rate.successes}/{rate.trials})"


def period(report: FunnelReport) -> str:
    """What the report covers, as a heading says it."""
    start = f"since {report.since:%Y-%m-%d}" if report.since else "all time"
    return f"{start}, generated {report.generated_at:%Y-%m-%d %H:%M} UTC"


@dataclass(frozen=True)
class Column:
    """A column of a table: its header, how a row's cell reads, and whether it is a number (right-aligned)."""

    header: str
    cell: Callable[[Any], str]
    numeric: bool = True


FUNNEL_COLUMNS = (
    Column("Logged", lambda r: str(r.opportunities)),
    Column("Emailed", lambda r: str(r.emailed)),
    Column("Yes", lambda r: str(r.yes)),
    Column("No", lambda r: str(r.no)),
    Column("Maybe", lambda r: str(r.maybe)),
    Column("No answer", lambda r: str(r.no_reply)),
    Column("Meetings", lambda r: str(r.meetings)),
    Column("Pipeline", lambda r: money(r.pipeline_value)),
)
WEEK_COLUMNS = (
    Column("Week", lambda r: r.week, numeric=False),
    Column("Alerts", lambda r: str(r.alerts)),
    Column("Qualified", lambda r: str(r.qualified)),
    *FUNNEL_COLUMNS,
)
PLAYBOOK_COLUMNS = (Column("Playbook", lambda r: r.playbook, numeric=False), *FUNNEL_COLUMNS)
VARIANT_COLUMNS = (
    Column("Playbook", lambda r: r.playbook, numeric=False),
    Column("Variant", lambda r: variant_name(r.variant), numeric=False),
    Column("Emailed", lambda r: str(r.emailed)),
    Column("Yes-rate [95% CI]", lambda r: rate_text(r.yes_rate)),
    Column("Meeting-rate [95% CI]", lambda r: rate_text(r.meeting_rate)),
    Column("Pipeline", lambda r: money(r.pipeline_value)),
)
TEST_COLUMNS = (
    Column("Playbook", lambda t: t.playbook, numeric=False),
    Column("Rate", lambda t: METRIC_NAMES[t.metric], numeric=False),
    Column("Variants", lambda t: " vs ".join(t.variants), numeric=False),
    Column("Result", lambda t: t.verdict, numeric=False),
)


@dataclass(frozen=True)
class Section:
    """A titled table of the report."""

    title: str
    columns: Sequence[Column]
    rows: Sequence[Any]
    empty: str

    def cells(self) -> list[list[str]]:
        return [[column.cell(row) for column in self.columns] for row in self.rows]


NO_EXPERIMENT = "No playbook ran an experiment (two or more variants) in this period."


def week_section(report: FunnelReport) -> Section:
    return Section("By ISO week", WEEK_COLUMNS, report.weeks, "No alerts or upsells in this period.")


def playbook_section(report: FunnelReport) -> Section:
    return Section("By playbook", PLAYBOOK_COLUMNS, report.playbooks, "No upsells logged in this period.")


def variant_section(report: FunnelReport) -> Section:
    return Section("By variant", VARIANT_COLUMNS, report.variants, "No upsells logged in this period.")


def test_section(report: FunnelReport) -> Section:
    return Section("Variant tests (two-proportion z-test)", TEST_COLUMNS, report.tests, NO_EXPERIMENT)


def sections(report: FunnelReport) -> list[Section]:
    """The report's tables in the order the terminal and the Markdown show them."""
    return [week_section(report), playbook_section(report), variant_section(report), test_section(report)]


def stage_share(stage: Stage) -> str:
    """`78% of emailed`: a stage as a share of the one it comes from ('' for the first, or when that one is 0)."""
    return f"{stage.share:.0%} of {stage.of.label.lower()}" if stage.of is not None and stage.share is not None else ""


# ---- renderers ----


def text_table(columns: Sequence[Column], cells: list[list[str]]) -> list[str]:
    """A plain-text table: a header row, a rule, one line per row, numbers right-aligned."""
    widths = [max([len(c.header), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if c.numeric else v.ljust(w) for v, w, c in zip(values, widths, columns, strict=True)
        ).rstrip()

    return [line([c.header for c in columns]), "  ".join("-" * w for w in widths), *map(line, cells)]


def render_text(report: FunnelReport) -> str:
    """The report as a terminal shows it: the funnel, then one table per section."""
    stages = funnel_stages(report)
    width = max(len(s.label) for s in stages)
    digits = max(len(str(s.count)) for s in stages)
    lines = [f"Upsell funnel, {period(report)}", ""]
    lines += [f"  {s.label.ljust(width)}  {str(s.count).rjust(digits)}  {stage_share(s)}".rstrip() for s in stages]
    lines += [f"  {'Pipeline'.ljust(width)}  {money(report.total.pipeline_value)} (estimated value answered yes)"]
    for section in sections(report):
        lines += ["", section.title]
        lines += text_table(section.columns, section.cells()) if section.rows else [f"  {section.empty}"]
    lines += ["", *report.notes] if report.notes else []
    return "\n".join(lines) + "\n"


_MARKDOWN_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>|~&"})


def markdown_text(text: str) -> str:
    """Text shown literally in Markdown (a playbook named `*x*` or `<b>` stays as written), on one line."""
    return " ".join(text.split()).translate(_MARKDOWN_SPECIAL)


def markdown_table(columns: Sequence[Column], cells: list[list[str]]) -> list[str]:
    """A Markdown table (every cell shown literally), numbers right-aligned."""
    header = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|"
    return [header, rule, *("| " + " | ".join(markdown_text(v) for v in row) + " |" for row in cells)]


def render_markdown(report: FunnelReport) -> str:
    """The report as Markdown (the weekly Prefect artifact): the funnel as a table, then one table per section."""
    lines = ["# Upsell funnel", "", f"_{markdown_text(period(report))}_", "", "| Stage | Count | Share |",
             "|---|---:|---|"]
    lines += [f"| {s.label} | {s.count} | {stage_share(s)} |" for s in funnel_stages(report)]
    lines += [f"| Pipeline (answered yes) | {money(report.total.pipeline_value)} | |"]
    for section in sections(report):
        lines += ["", f"## {section.title}", ""]
        lines += markdown_table(section.columns, section.cells()) if section.rows else [section.empty]
    lines += ["", *(f"> {markdown_text(note)}" for note in report.notes)] if report.notes else []
    return "\n".join(lines) + "\n"
