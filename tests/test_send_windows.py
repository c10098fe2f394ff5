"""Send windows: the next allowed instant in the contact's zone, across weekends, time zones, DST changes and
public holidays, with a frozen clock (`now` is passed in), and a property check against a brute-force scan."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.playbooks import SendWindow
from flows.send_windows import describe_wait, is_known_country, next_send_time, resolve_zone

NY = "America/New_York"
BERLIN = "Europe/Berlin"
EVERY_DAY = list(range(7))
OFFICE = SendWindow()  # 09:00 to 17:00, Monday to Friday, skipping public holidays


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def local(zone: str, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(zone), fold=fold)


def window(start: str, end: str, weekdays: list[int] | None = None, skip_public_holidays: bool = True) -> SendWindow:
    return SendWindow(
        start=time.fromisoformat(start),
        end=time.fromisoformat(end),
        weekdays=EVERY_DAY if weekdays is None else weekdays,
        skip_public_holidays=skip_public_holidays,
    )


# --- window arithmetic --------------------------------------------------------------------------------------------


def test_inside_the_window_is_now_in_utc() -> None:
    now = local(BERLIN, 2026, 12, 8, 16, 0, 0).replace(microsecond=123456)  # 10:00:00.123456 in New York
    sent = next_send_time(OFFICE, now, NY, "US")
    assert sent == now
    assert sent.tzinfo is UTC


def test_the_window_includes_its_start_and_excludes_its_end() -> None:
    opening = local(NY, 2026, 12, 8, 9, 0)
    assert next_send_time(OFFICE, opening, NY, "US") == opening
    assert next_send_time(OFFICE, local(NY, 2026, 12, 8, 17, 0), NY, "US") == local(NY, 2026, 12, 9, 9, 0)
    last = local(NY, 2026, 12, 8, 16, 59, 59).replace(microsecond=999999)
    assert next_send_time(OFFICE, last, NY, "US") == last


def test_before_opening_waits_for_the_same_day() -> None:
    assert next_send_time(OFFICE, local(NY, 2026, 12, 8, 7, 15), NY, "US") == utc(2026, 12, 8, 14, 0)


def test_after_closing_waits_for_the_next_business_day() -> None:
    assert next_send_time(OFFICE, local(NY, 2026, 12, 8, 18, 0), NY, "US") == utc(2026, 12, 9, 14, 0)


def test_friday_evening_waits_for_monday() -> None:
    assert next_send_time(OFFICE, local(NY, 2026, 12, 11, 18, 30), NY, "US") == utc(2026, 12, 14, 14, 0)


def test_a_weekend_only_window() -> None:
    weekend = window("10:00", "14:00", weekdays=[5, 6])
    assert next_send_time(weekend, local(NY, 2026, 12, 7, 11, 0), NY, "US") == local(NY, 2026, 12, 12, 10, 0)
    assert next_send_time(weekend, local(NY, 2026, 12, 12, 15, 0), NY, "US") == local(NY, 2026, 12, 13, 10, 0)
    assert next_send_time(weekend, local(NY, 2026, 12, 13, 15, 0), NY, "US") == local(NY, 2026, 12, 19, 10, 0)


@pytest.mark.parametrize(
    ("zone", "now", "expected"),
    [
        # Sunday 6 Dec 2026 12:00 UTC: the next Monday 09:00 of each zone.
        (NY, utc(2026, 12, 6, 12), utc(2026, 12, 7, 14, 0)),  # EST, UTC-5
        (BERLIN, utc(2026, 12, 6, 12), utc(2026, 12, 7, 8, 0)),  # CET, UTC+1
        ("Asia/Tokyo", utc(2026, 12, 6, 12), utc(2026, 12, 7, 0, 0)),  # JST, UTC+9
        ("Australia/Sydney", utc(2026, 12, 6, 12), utc(2026, 12, 6, 22, 0)),  # AEDT, UTC+11: still Sunday in UTC
        ("Asia/Kolkata", utc(2026, 12, 6, 12), utc(2026, 12, 7, 3, 30)),  # IST, UTC+5:30
        # Sunday 7 Jun 2026 12:00 UTC: the other side of the year.
        (NY, utc(2026, 6, 7, 12), utc(2026, 6, 8, 13, 0)),  # EDT, UTC-4
        (BERLIN, utc(2026, 6, 7, 12), utc(2026, 6, 8, 7, 0)),  # CEST, UTC+2
        ("Australia/Sydney", utc(2026, 6, 7, 12), utc(2026, 6, 7, 23, 0)),  # AEST, UTC+10
        ("Asia/Kolkata", utc(2026, 6, 7, 12), utc(2026, 6, 8, 3, 30)),
    ],
)
def test_time_zones_give_the_right_utc_instant(zone: str, now: datetime, expected: datetime) -> None:
    assert next_send_time(OFFICE, now, zone, "") == expected


def test_a_half_hour_offset_inside_and_outside() -> None:
    kolkata = "Asia/Kolkata"
    assert next_send_time(OFFICE, utc(2026, 12, 7, 3, 29), kolkata, "IN") == utc(2026, 12, 7, 3, 30)
    assert next_send_time(OFFICE, utc(2026, 12, 7, 3, 30), kolkata, "IN") == utc(2026, 12, 7, 3, 30)
    assert next_send_time(OFFICE, utc(2026, 12, 7, 11, 30), kolkata, "IN") == utc(2026, 12, 8, 3, 30)


# --- DST -----------------------------------------------------------------------------------------------------------


def test_us_spring_forward() -> None:
    daily = window("09:00", "17:00")
    # Saturday 7 March is EST (UTC-5), Sunday 8 March is EDT (UTC-4).
    assert next_send_time(daily, local(NY, 2026, 3, 7, 18, 0), NY, "") == utc(2026, 3, 8, 13, 0)
    assert next_send_time(OFFICE, local(NY, 2026, 3, 6, 18, 0), NY, "US") == utc(2026, 3, 9, 13, 0)


def test_us_spring_forward_window_opening_in_the_gap_opens_when_the_gap_ends() -> None:
    # 02:00 to 03:00 does not exist on 8 March: the window opens at 03:00 EDT, 07:00 UTC.
    gap = window("02:30", "04:00")
    assert next_send_time(gap, local(NY, 2026, 3, 8, 1, 0), NY, "") == utc(2026, 3, 8, 7, 0)
    assert next_send_time(gap, utc(2026, 3, 8, 6, 59, 59), NY, "") == utc(2026, 3, 8, 7, 0)
    assert next_send_time(gap, utc(2026, 3, 8, 7, 0), NY, "") == utc(2026, 3, 8, 7, 0)
    assert next_send_time(gap, utc(2026, 3, 8, 7, 30), NY, "") == utc(2026, 3, 8, 7, 30)  # 03:30 EDT: inside
    # A window wholly inside the gap has no instant that day: the next day's 02:00 EDT.
    lost = window("02:00", "02:45")
    assert next_send_time(lost, local(NY, 2026, 3, 8, 0, 0), NY, "") == utc(2026, 3, 9, 6, 0)


def test_us_fall_back() -> None:
    daily = window("09:00", "17:00")
    # Saturday 31 October is EDT (UTC-4), Sunday 1 November is EST (UTC-5).
    assert next_send_time(daily, local(NY, 2026, 10, 31, 18, 0), NY, "") == utc(2026, 11, 1, 14, 0)
    assert next_send_time(OFFICE, local(NY, 2026, 10, 30, 18, 0), NY, "US") == utc(2026, 11, 2, 14, 0)


def test_us_fall_back_ambiguous_start_is_the_first_occurrence() -> None:
    repeated = window("01:30", "03:00")  # 01:00 to 02:00 happens twice on 1 November
    assert next_send_time(repeated, local(NY, 2026, 11, 1, 0, 0), NY, "") == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    # Now in the second pass, before 01:30 again: the second 01:30 (EST) is the next allowed instant.
    second_pass = local(NY, 2026, 11, 1, 1, 15, fold=1)
    assert second_pass.astimezone(UTC) == utc(2026, 11, 1, 6, 15)  # fold=1 compares unequal across zones
    assert next_send_time(repeated, second_pass, NY, "") == utc(2026, 11, 1, 6, 30)


def test_us_fall_back_second_pass_is_inside_the_window() -> None:
    short = window("00:30", "01:30")
    assert next_send_time(short, local(NY, 2026, 11, 1, 1, 15, fold=1), NY, "") == utc(2026, 11, 1, 6, 15)
    # 01:45 EDT is past the end, but the clock goes back to 01:00 EST at 06:00 UTC, inside the window again.
    assert next_send_time(short, local(NY, 2026, 11, 1, 1, 45), NY, "") == utc(2026, 11, 1, 6, 0)


def test_europe_spring_forward() -> None:
    # 29 March 2026: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
    assert next_send_time(OFFICE, local(BERLIN, 2026, 3, 27, 8, 0), BERLIN, "DE") == utc(2026, 3, 27, 8, 0)
    assert next_send_time(OFFICE, local(BERLIN, 2026, 3, 27, 18, 0), BERLIN, "DE") == utc(2026, 3, 30, 7, 0)
    gap = window("02:30", "05:00")
    assert next_send_time(gap, local(BERLIN, 2026, 3, 28, 12, 0), BERLIN, "") == utc(2026, 3, 29, 1, 0)


def test_europe_fall_back() -> None:
    # 25 October 2026: 03:00 CEST becomes 02:00 CET at 01:00 UTC.
    assert next_send_time(OFFICE, local(BERLIN, 2026, 10, 23, 18, 0), BERLIN, "DE") == utc(2026, 10, 26, 8, 0)
    repeated = window("02:30", "05:00")
    first = utc(2026, 10, 25, 0, 30)  # 02:30 CEST, the first of the two
    assert next_send_time(repeated, local(BERLIN, 2026, 10, 24, 12, 0), BERLIN, "") == first
    assert first.astimezone(ZoneInfo(BERLIN)).fold == 0


# --- public holidays ---------------------------------------------------------------------------------------------


def test_us_thanksgiving_is_skipped() -> None:
    wednesday_evening = local(NY, 2026, 11, 25, 18, 0)
    assert next_send_time(OFFICE, wednesday_evening, NY, "US") == utc(2026, 11, 27, 14, 0)
    assert next_send_time(OFFICE, local(NY, 2026, 11, 26, 10, 0), NY, "US") == utc(2026, 11, 27, 14, 0)


def test_us_christmas_on_a_friday_waits_for_monday() -> None:
    assert next_send_time(OFFICE, local(NY, 2026, 12, 24, 18, 0), NY, "US") == utc(2026, 12, 28, 14, 0)


def test_german_holidays_are_skipped() -> None:
    # Whit Monday, 25 May 2026.
    assert next_send_time(OFFICE, local(BERLIN, 2026, 5, 22, 18, 0), BERLIN, "DE") == utc(2026, 5, 26, 7, 0)
    # Christmas Day, Friday 25 December 2026.
    assert next_send_time(OFFICE, local(BERLIN, 2026, 12, 24, 18, 0), BERLIN, "DE") == utc(2026, 12, 28, 8, 0)


def test_japanese_holiday_is_skipped_by_the_local_date() -> None:
    tokyo = "Asia/Tokyo"
    # Culture Day, Tuesday 3 November 2026; 09:30 there is still 2 November in UTC.
    assert next_send_time(OFFICE, local(tokyo, 2026, 11, 2, 18, 0), tokyo, "JP") == utc(2026, 11, 4, 0, 0)
    assert next_send_time(OFFICE, utc(2026, 11, 3, 0, 30), tokyo, "JP") == utc(2026, 11, 4, 0, 0)


def test_skip_public_holidays_false_ignores_them() -> None:
    working = window("09:00", "17:00", weekdays=[0, 1, 2, 3, 4], skip_public_holidays=False)
    assert next_send_time(working, local(NY, 2026, 11, 25, 18, 0), NY, "US") == utc(2026, 11, 26, 14, 0)
    thanksgiving_morning = local(NY, 2026, 11, 26, 10, 0)
    assert next_send_time(working, thanksgiving_morning, NY, "US") == thanksgiving_morning


@pytest.mark.parametrize("country", ["", "  ", "XX", "ZZZ", "not a country"])
def test_unknown_or_empty_country_has_no_holidays(country: str) -> None:
    assert not is_known_country(country)
    thanksgiving_morning = local(NY, 2026, 11, 26, 10, 0)
    assert next_send_time(OFFICE, thanksgiving_morning, NY, country) == thanksgiving_morning


def test_country_codes_ignore_case_and_spaces() -> None:
    assert is_known_country(" us ")
    assert next_send_time(OFFICE, local(NY, 2026, 11, 26, 10, 0), NY, " us ") == utc(2026, 11, 27, 14, 0)


# --- time zones by name ------------------------------------------------------------------------------------------


def test_known_zone_resolves() -> None:
    assert resolve_zone("Asia/Kolkata") == (ZoneInfo("Asia/Kolkata"), True)
    assert resolve_zone("UTC") == (ZoneInfo("UTC"), True)


@pytest.mark.parametrize(
    "name", ["", "Mars/Olympus_Mons", "America", "../etc/passwd", "/etc/passwd", "america/new_york", "UTC\x00"]
)
def test_unknown_zone_falls_back_to_utc(name: str) -> None:
    assert resolve_zone(name) == (ZoneInfo("UTC"), False)
    now = utc(2026, 12, 8, 7, 0)
    assert next_send_time(OFFICE, now, name, "") == next_send_time(OFFICE, now, "UTC", "") == utc(2026, 12, 8, 9, 0)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_send_time(OFFICE, datetime(2026, 12, 8, 12, 0), NY, "US")


def test_a_window_with_no_day_raises() -> None:
    never = SendWindow.model_construct(start=time(9), end=time(17), weekdays=[], skip_public_holidays=True)
    with pytest.raises(ValueError, match="no allowed send time"):
        next_send_time(never, utc(2026, 12, 8, 12, 0), NY, "US")


# --- the stage artifact's text -----------------------------------------------------------------------------------


def test_describe_wait() -> None:
    assert describe_wait(utc(2026, 12, 7, 14, 0), NY) == "sends Mon 7 Dec 2026 09:00 America/New_York (14:00 UTC)"
    assert describe_wait(utc(2026, 12, 7, 3, 30), "Asia/Kolkata") == (
        "sends Mon 7 Dec 2026 09:00 Asia/Kolkata (03:30 UTC)"
    )
    sydney = describe_wait(utc(2026, 12, 6, 22, 0), "Australia/Sydney")
    assert sydney == "sends Mon 7 Dec 2026 09:00 Australia/Sydney (22:00 UTC Sun)"
    assert describe_wait(utc(2026, 12, 7, 14, 0), "UTC") == "sends Mon 7 Dec 2026 14:00 UTC"
    assert describe_wait(utc(2026, 12, 7, 14, 0), "Mars/Olympus_Mons") == (
        "sends Mon 7 Dec 2026 14:00 UTC (time zone 'Mars/Olympus_Mons' unknown)"
    )


# --- property: the result is the earliest allowed instant --------------------------------------------------------

ZONES = [
    "UTC",
    NY,
    "America/Los_Angeles",
    "America/St_Johns",  # UTC-3:30 / -2:30
    "America/Santiago",  # changes at local midnight
    "America/Havana",  # changes at local midnight, falling back to the previous day
    BERLIN,
    "Europe/London",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Asia/Kathmandu",  # UTC+5:45
    "Australia/Sydney",
    "Australia/Lord_Howe",  # a half-hour DST change
    "Pacific/Chatham",  # UTC+12:45 / +13:45
    "Mars/Olympus_Mons",  # unknown: UTC
]
COUNTRIES = ["US", "DE", "JP", "GB", "AU", "IN", "NZ", "CL", "CU", "", "XX"]


@cache
def _offset_changes(name: str) -> list[datetime]:
    """The instants of 2026 at which the zone's UTC offset changes, found by an hourly scan refined to the minute."""
    zone = resolve_zone(name)[0]
    changes = []
    hour = utc(2026, 1, 1)
    while hour.year == 2026:
        after = hour + timedelta(hours=1)
        if hour.astimezone(zone).utcoffset() != after.astimezone(zone).utcoffset():
            minute = hour
            while minute.astimezone(zone).utcoffset() == hour.astimezone(zone).utcoffset():
                minute += timedelta(minutes=1)
            changes.append(minute)
        hour = after
    return changes


def _clock(minutes: int) -> time:
    return time(minutes // 60, minutes % 60)


DST_ZONES = [name for name in ZONES if _offset_changes(name)]


def _window(draw: st.DrawFn, start: int, every_day: bool = False) -> SendWindow:
    end = draw(st.one_of(st.integers(start + 1, 1439), st.integers(start + 1, min(start + 120, 1439))))
    return SendWindow(
        start=_clock(start),
        end=_clock(end),
        weekdays=EVERY_DAY if every_day else sorted(draw(st.sets(st.integers(0, 6), min_size=1))),
        skip_public_holidays=draw(st.booleans()),
    )


@st.composite
def anywhere(draw: st.DrawFn) -> tuple[SendWindow, datetime, str, str]:
    """Any window, clock (2024 to 2030), zone and country."""
    now = draw(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31))).replace(tzinfo=UTC)
    window = _window(draw, draw(st.integers(0, 1438)))
    return window, now, draw(st.sampled_from(ZONES)), draw(st.sampled_from(COUNTRIES))


@st.composite
def near_dst_changes(draw: st.DrawFn) -> tuple[SendWindow, datetime, str, str]:
    """A clock within hours of a DST change and a window opening in or around the hour skipped or repeated."""
    zone = draw(st.sampled_from(DST_ZONES))
    change = draw(st.sampled_from(_offset_changes(zone)))
    wall = change.astimezone(ZoneInfo(zone))
    start = min(max(wall.hour * 60 + wall.minute + draw(st.integers(-60, 60)), 0), 1438)
    shift = draw(st.one_of(st.integers(-120, 120), st.integers(-2 * 1440, 120)))
    now = change + timedelta(minutes=shift, seconds=draw(st.integers(0, 59)))
    window = _window(draw, start, every_day=draw(st.booleans()))
    return window, now, zone, draw(st.sampled_from(COUNTRIES))


def _oracle(window: SendWindow, zone_name: str, country: str) -> Callable[[datetime], bool]:
    """The definition of an allowed instant, written out independently of the module."""
    zone = ZoneInfo("UTC") if zone_name == "Mars/Olympus_Mons" else ZoneInfo(zone_name)
    calendar = (
        holidays.country_holidays(country) if window.skip_public_holidays and country not in ("", "XX") else set()
    )

    def allowed(instant: datetime) -> bool:
        moment = instant.astimezone(zone)
        day: date = moment.date()
        return window.start <= moment.time() < window.end and day.weekday() in window.weekdays and day not in calendar

    return allowed


@settings(max_examples=200, deadline=None)
@given(case=anywhere())
def test_next_send_time_is_the_earliest_allowed_instant(case: tuple[SendWindow, datetime, str, str]) -> None:
    _check_earliest(*case)


@settings(max_examples=200, deadline=None)
@given(case=near_dst_changes())
def test_next_send_time_is_the_earliest_allowed_instant_near_dst_changes(
    case: tuple[SendWindow, datetime, str, str],
) -> None:
    _check_earliest(*case)


def _check_earliest(window: SendWindow, now: datetime, zone: str, country: str) -> None:
    allowed = _oracle(window, zone, country)
    sent = next_send_time(window, now, zone, country)
    assert sent.tzinfo is UTC
    assert sent >= now
    assert allowed(sent)
    if allowed(now):
        assert sent == now
        return
    # Window bounds and (in these zones, these years) offset changes fall on whole minutes, so whether an instant
    # is allowed only changes on a minute: checking every minute between now and the result is exhaustive.
    minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute < sent:
        assert not allowed(minute), f"{minute} is allowed and earlier than {sent}"
        minute += timedelta(minutes=1)
