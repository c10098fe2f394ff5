"""The funnel report as an HTML page, its charts drawn on the page as inline SVG (no script, no library, nothing
loaded from elsewhere): the funnel's bars, the weekly bars, each variant's rates with their Wilson interval as
whiskers, and what the tests between variants allow one to say. Every text that comes from a store is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from fastapi.responses import HTMLResponse

from flows.report import (
    METRIC_NAMES,
    NO_EXPERIMENT,
    FunnelReport,
    Rate,
    Section,
    Stage,
    VariantRow,
    WeekRow,
    funnel_stages,
    money,
    percent,
    period,
    playbook_section,
    stage_share,
    variant_name,
    variant_section,
    week_section,
)
from webhook.security import CSP, page_policy

WIDTH = 760
#: The colour of each funnel stage (the answers in the colours people expect of them).
STAGE_COLOURS = {
    "Alerts": "#8c959f", "Qualified": "#6e7781", "Upsells logged": "#54aeff", "Emailed": "#0969da",
    "Answered yes": "#1a7f37", "Answered no": "#cf222e", "Answered maybe": "#bf8700", "No answer": "#afb8c1",
    "Meetings": "#8250df",
}
#: The weekly series: label, the row's field, colour.
WEEK_SERIES = (
    ("Alerts", "alerts", "#8c959f"), ("Qualified", "qualified", "#6e7781"), ("Emailed", "emailed", "#0969da"),
    ("Answered yes", "yes", "#1a7f37"), ("Meetings", "meetings", "#8250df"),
)
RATE_COLOURS = {"yes": "#1a7f37", "meeting": "#8250df"}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#1f2328}"
    "h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}"
    ".muted{color:#656d76;font-size:.9rem}svg{display:block;max-width:100%;height:auto;margin:.6rem 0}"
    "svg text{font-family:system-ui,sans-serif;font-size:12px;fill:#1f2328}svg .axis{fill:#656d76;font-size:11px}"
    "table{border-collapse:collapse;font-size:.85rem;margin:.8rem 0;display:block;overflow-x:auto}"
    "th,td{padding:.25rem .55rem;border-bottom:1px solid #d0d7de;white-space:nowrap}th{text-align:left}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "ul.tests li{margin:.3rem 0}.lead{color:#1a7f37;font-weight:600}.small{color:#9a6700}"
    "form{margin:1rem 0}input,button{font-size:.95rem;padding:.3rem .5rem}"
)


def _text(x: float, y: float, content: str, *, anchor: str = "start", css: str = "") -> str:
    """An SVG text (escaped)."""
    klass = f" class='{css}'" if css else ""
    return f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}'{klass}>{escape(content)}</text>"


def _rect(x: float, y: float, width: float, height: float, colour: str, title: str, css: str = "bar") -> str:
    """An SVG bar with its tooltip (escaped)."""
    return (f"<rect class='{css}' x='{x:.1f}' y='{y:.1f}' width='{max(width, 0):.1f}' height='{max(height, 0):.1f}'"
            f" fill='{colour}'><title>{escape(title)}</title></rect>")


def _svg(height: float, label: str, body: Sequence[str], css: str) -> str:
    return (f"<svg class='chart {css}' role='img' aria-label='{escape(label)}' viewBox='0 0 {WIDTH} {height:.0f}'"
            f" width='{WIDTH}' height='{height:.0f}' xmlns='http://www.w3.org/2000/svg'>{''.join(body)}</svg>")


def funnel_svg(stages: Sequence[Stage]) -> str:
    """Horizontal bars, one per stage, each as long as its count (the first stage the longest)."""
    label_w, row_h, bar_h = 130, 30, 20
    longest = max([s.count for s in stages] + [1])
    area = WIDTH - label_w - 170
    body = []
    for i, stage in enumerate(stages):
        y = 6 + i * row_h
        width = area * stage.count / longest
        share = stage_share(stage)
        body.append(_text(0, y + 14, stage.label))
        body.append(_rect(label_w, y, width, bar_h, STAGE_COLOURS.get(stage.label, "#0969da"),
                          f"{stage.label}: {stage.count}" + (f" ({share})" if share else "")))
        body.append(_text(label_w + width + 6, y + 14, f"{stage.count}" + (f"  ({share})" if share else "")))
    return _svg(12 + len(stages) * row_h, "The funnel, from the alerts received to the meetings booked", body,
                "funnel")


def _legend(series: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    """A row of coloured squares with their names."""
    parts = []
    for label, colour in series:
        parts.append(f"<rect x='{x:.1f}' y='{y - 9:.1f}' width='10' height='10' fill='{colour}'></rect>")
        parts.append(_text(x + 14, y, label))
        x += 24 + 7 * len(label)
    return parts


def weekly_svg(weeks: Sequence[WeekRow]) -> str:
    """Grouped vertical bars per ISO week: alerts, qualified, emailed, answered yes, meetings."""
    left, top, plot_h, bottom = 44, 30, 180, 34
    highest = max([getattr(w, field) for w in weeks for _, field, _ in WEEK_SERIES] + [1])
    group = (WIDTH - left - 8) / max(len(weeks), 1)
    bar = group * 0.84 / len(WEEK_SERIES)
    every = math.ceil(len(weeks) / 16) or 1  # at most 16 week labels, so they never overlap
    body = _legend([(label, colour) for label, _, colour in WEEK_SERIES], left, 14)
    body += [f"<line x1='{left}' y1='{top + plot_h}' x2='{WIDTH - 8}' y2='{top + plot_h}' stroke='#8c959f'></line>",
             _text(left - 6, top + 8, str(highest), anchor="end", css="axis"),
             _text(left - 6, top + plot_h, "0", anchor="end", css="axis")]
    for i, week in enumerate(weeks):
        x0 = left + i * group + group * 0.08
        for j, (label, field, colour) in enumerate(WEEK_SERIES):
            value = getattr(week, field)
            height = plot_h * value / highest
            body.append(_rect(x0 + j * bar, top + plot_h - height, bar - 1, height, colour,
                              f"{week.week} {label.lower()}: {value}"))
        if i % every == 0:
            body.append(_text(left + (i + 0.5) * group, top + plot_h + 16, week.week.split("-")[-1], anchor="middle",
                              css="axis"))
    return _svg(top + plot_h + bottom, "Alerts, qualified, emailed, yes answers and meetings per ISO week", body,
                "weekly")


def _rate_line(y: float, x0: float, area: float, rate: Rate, name: str, colour: str) -> list[str]:
    """One rate as a bar from 0, its Wilson interval as a whisker with caps, and the figures beside it."""
    if rate.rate is None or rate.low is None or rate.high is None:
        return [_text(x0 + 4, y + 4, f"{name}: nothing emailed", css="axis")]
    low, high = x0 + area * rate.low, x0 + area * rate.high
    mid = y + 0.5
    return [
        _rect(x0, y - 5, area * rate.rate, 10, colour, f"{name} {percent(rate.rate)} "
              f"(95% interval {percent(rate.low)} to {percent(rate.high)}; {rate.successes}/{rate.trials})"),
        f"<line class='whisker' x1='{low:.1f}' y1='{mid:.1f}' x2='{high:.1f}' y2='{mid:.1f}' stroke='#1f2328'"
        " stroke-width='1.5'></line>",
        *(f"<line x1='{x:.1f}' y1='{y - 6:.1f}' x2='{x:.1f}' y2='{y + 7:.1f}' stroke='#1f2328' stroke-width='1.5'>"
          "</line>" for x in (low, high)),
        _text(x0 + area + 8, y + 4, f"{name} {percent(rate.rate)} ({rate.successes}/{rate.trials})"),
    ]


def rates_svg(variants: Sequence[VariantRow]) -> str:
    """Each variant's yes-rate and meeting-rate over its emailed upsells, with the 95 % Wilson interval whiskers."""
    label_w, top, row_h = 190, 26, 44
    area = WIDTH - label_w - 170
    body = _legend([("yes-rate", RATE_COLOURS["yes"]), ("meeting-rate", RATE_COLOURS["meeting"]),
                    ("95% Wilson interval", "#1f2328")], label_w, 12)
    bottom = top + row_h * len(variants)
    for tick in (0, 0.25, 0.5, 0.75, 1):
        x = label_w + area * tick
        body += [f"<line x1='{x:.1f}' y1='{top - 4}' x2='{x:.1f}' y2='{bottom}' stroke='#d0d7de'></line>",
                 _text(x, bottom + 14, f"{tick:.0%}", anchor="middle", css="axis")]
    for i, row in enumerate(variants):
        y = top + i * row_h
        body.append(_text(0, y + 18, f"{row.playbook} / {variant_name(row.variant)}"))
        body += _rate_line(y + 10, label_w, area, row.yes_rate, "yes", RATE_COLOURS["yes"])
        body += _rate_line(y + 28, label_w, area, row.meeting_rate, "meeting", RATE_COLOURS["meeting"])
    return _svg(bottom + 22, "Yes-rate and meeting-rate per variant, with 95% Wilson intervals", body, "rates")


def html_table(section: Section) -> str:
    """A section of the report as an HTML table (every cell escaped), or its sentence when it has no rows."""
    if not section.rows:
        return f"<p class=muted>{escape(section.empty)}</p>"
    head = "".join(f"<th>{escape(c.header)}</th>" for c in section.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td{' class=n' if c.numeric else ''}>{escape(v)}</td>"
                         for c, v in zip(section.columns, cells, strict=True)) + "</tr>"
        for cells in section.cells()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def tests_list(report: FunnelReport) -> str:
    """What the tests between variants say, one line each (the empty sentence when no playbook ran an experiment)."""
    if not report.tests:
        return f"<p class=muted>{escape(NO_EXPERIMENT)}</p>"
    items = []
    for test in report.tests:
        css = "lead" if test.leader else "small" if test.too_small else ""
        name = METRIC_NAMES[test.metric]
        items.append(f"<li><b>{escape(test.playbook)}</b>, {name}, {escape(' vs '.join(test.variants))}: "
                     f"<span class='{css}'>{escape(test.verdict)}</span></li>")
    return f"<ul class=tests>{''.join(items)}</ul>"


def report_body(report: FunnelReport) -> str:
    """The page's body: the period and a form to change it, then each chart with its table."""
    since = f"{report.since:%Y-%m-%d}" if report.since else ""
    notes = "".join(f"<p class=muted>{escape(note)}</p>" for note in report.notes)
    return (
        f"<h1>Upsell funnel</h1><p class=muted>{escape(period(report))}</p>"
        f"<form method=get><label>Since <input type=date name=since value='{since}'></label> "
        "<button type=submit>Show</button></form>"
        f"<h2>Funnel</h2>{funnel_svg(funnel_stages(report))}"
        f"<p>Pipeline (estimated value of the upsells answered yes): <b>{money(report.total.pipeline_value)}</b></p>"
        f"<h2>By ISO week</h2>{weekly_svg(report.weeks) if report.weeks else ''}{html_table(week_section(report))}"
        f"<h2>By variant</h2>{rates_svg(report.variants) if report.variants else ''}"
        f"<h3>Tests between variants (two-proportion z-test)</h3>{tests_list(report)}"
        f"{html_table(variant_section(report))}"
        f"<h2>By playbook</h2>{html_table(playbook_section(report))}{notes}"
    )


def report_page(report: FunnelReport) -> HTMLResponse:
    """The whole page, with its Content-Security-Policy (its own inline style, nothing else) and no caching."""
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=robots content=noindex>"
        "<meta name=viewport content='width=device-width,initial-scale=1'><title>Upsell funnel</title>"
        f"<style>{_STYLE}</style></head><body>{report_body(report)}</body></html>"
    )
    headers = {"Cache-Control": "no-store", CSP: page_policy(body)}
    return HTMLResponse(body, headers=headers)


def sign_in_page(*, token_form: bool, basic: bool, message: str = "", status_code: int = 401,
                 headers: dict[str, str] | None = None) -> HTMLResponse:
    """The page a browser without the report's credentials gets: a form for the report's token (posted to
    /report/login, answered with a session cookie), and when a user name and password are set up, a word that the
    browser asks for them (the 401's Basic challenge)."""
    parts = ["<h1>Upsell funnel</h1><p>The funnel report is for the people who hold its credentials.</p>"]
    if message:
        parts.append(f"<p class=small role=alert>{escape(message)}</p>")
    if token_form:
        parts.append(
            "<form method=post action='/report/login'><label>Report token "
            "<input type=password name=token autocomplete=current-password required autofocus></label> "
            "<button type=submit>Sign in</button></form>"
        )
    if basic:
        parts.append("<p class=muted>Or sign in with the report's user name and password: your browser asks for "
                     "them (reload the page if you closed its prompt).</p>")
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=robots content=noindex>"
        "<meta name=viewport content='width=device-width,initial-scale=1'><title>Sign in: upsell funnel</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    return HTMLResponse(body, status_code=status_code,
                        headers={**(headers or {}), "Cache-Control": "no-store", CSP: page_policy(body)})
