"""Send windows: the earliest instant a playbook's email may go out, in the contact's own time zone.

An instant is allowed when, on the contact's local clock, its time is in [start, end), its weekday is one of the
window's and (if the window skips them) its date is not a public holiday of the contact's country. Local time
is taken literally across DST changes: a window opening inside a spring-forward gap opens when the gap ends,
and a local time that occurs twice at fall-back is allowed on both passes, so the first occurrence comes first.

Pure: no Prefect, no I/O, and no clock; the caller passes `now`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from flows.playbooks import SendWindow

MAX_DAYS_AHEAD = 400
_UTC_ZONE = ZoneInfo("UTC")
# Wider than any UTC offset change, so each change near a local midnight is seen from both days around it.
_DAY_MARGIN = timedelta(hours=3)
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def resolve_zone(name: str) -> tuple[ZoneInfo, bool]:
    """The IANA zone `name`, and True; or UTC and False when the name is not a known zone."""
    try:
        return ZoneInfo(name), True
    # Not found, a malformed or absolute key, a directory such as "America", or a file that is not a zone.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return _UTC_ZONE, False


def is_known_country(country: str) -> bool:
    """Whether the `holidays` package has a calendar for the country code (case and spaces ignored)."""
    return _holiday_calendar(country) is not None


def next_send_time(window: SendWindow, now: datetime, timezone: str, country: str) -> datetime:
    """The earliest instant >= `now` (in UTC) allowed by the window in the contact's zone and country.

    An unknown zone is read as UTC (see `resolve_zone`); an unknown or empty country has no holidays.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    zone, _ = resolve_zone(timezone)
    is_holiday = _holiday_calendar(country) if window.skip_public_holidays else None

    def day_allowed(day: date) -> bool:
        return day.weekday() in window.weekdays and (is_holiday is None or not is_holiday(day))

    def allowed(instant: datetime) -> bool:
        local = instant.astimezone(zone)
        return window.start <= local.time() < window.end and day_allowed(local.date())

    start = now.astimezone(UTC)
    if allowed(start):
        return start
    # The window can only open at an instant whose local time is `start`, or where the UTC offset changes (the
    # clock jumps, maybe into the window); so the answer is the first such instant after `now` that is allowed.
    # Begin a day early: a fall-back at local midnight can take the local date back one day.
    first_day = start.astimezone(zone).date() - timedelta(days=1)
    found: datetime | None = None
    for offset in range(MAX_DAYS_AHEAD + 2):
        day = first_day + timedelta(days=offset)
        if found is not None and found.astimezone(zone).date() < day - timedelta(days=1):
            return found
        if not day_allowed(day):
            continue
        for candidate in sorted(_openings(day, window.start, zone)):
            if candidate > start and allowed(candidate):
                found = candidate if found is None else min(found, candidate)
                break
    if found is not None:
        return found
    raise ValueError(f"no allowed send time within {MAX_DAYS_AHEAD} days of {start.isoformat()}")


def describe_wait(send_at: datetime, timezone: str) -> str:
    """Text for the stage artifact, e.g. "sends Mon 7 Dec 2026 09:00 America/New_York (14:00 UTC)"."""
    zone, known = resolve_zone(timezone)
    utc = send_at.astimezone(UTC)
    if not known:
        return f"sends {_day_and_time(utc)} UTC (time zone {timezone!r} unknown)"
    if zone.key == "UTC":
        return f"sends {_day_and_time(utc)} UTC"
    local = send_at.astimezone(zone)
    # Name the UTC weekday too when the UTC date differs (Sydney's Monday morning is Sunday evening in UTC).
    utc_day = "" if utc.date() == local.date() else f" {_WEEKDAYS[utc.weekday()]}"
    return f"sends {_day_and_time(local)} {zone.key} ({utc:%H:%M} UTC{utc_day})"


def _day_and_time(moment: datetime) -> str:
    # Spelled out rather than strftime("%a %b"), which follows the process locale.
    return f"{_WEEKDAYS[moment.weekday()]} {moment.day} {_MONTHS[moment.month - 1]} {moment.year} {moment:%H:%M}"


def _holiday_calendar(country: str) -> Callable[[date], bool] | None:
    code = country.strip().upper()
    if not code:
        return None
    try:
        # Built per call: the calendar fills in years as they are asked for, so it is not shared between threads.
        calendar = holidays.country_holidays(code)
    except NotImplementedError:  # the package's answer for a country it does not know
        return None
    return calendar.__contains__


def _openings(day: date, start: time, zone: ZoneInfo) -> Iterator[datetime]:
    """The UTC instants on or near local `day` at which the window may open."""
    wall = datetime.combine(day, start)
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:  # not in a spring-forward gap
            yield instant
    begin = datetime.combine(day, time.min, tzinfo=zone).astimezone(UTC) - _DAY_MARGIN
    end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone).astimezone(UTC) + _DAY_MARGIN
    # Offsets change at most once in a day; zones' changes fall on whole seconds.
    if begin.astimezone(zone).utcoffset() != end.astimezone(zone).utcoffset():
        yield _offset_change(begin.replace(microsecond=0), end.replace(microsecond=0), zone)


def _offset_change(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first instant of (before, after] with `after`'s UTC offset, to the second."""
    offset = before.astimezone(zone).utcoffset()
    while after - before > timedelta(seconds=1):
        middle = before + timedelta(seconds=(after - before) // timedelta(seconds=2))
        if middle.astimezone(zone).utcoffset() == offset:
            before = middle
        else:
            after = middle
    return after
