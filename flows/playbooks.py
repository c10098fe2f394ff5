"""Playbooks: which accounts get which upsell, as configuration.

A playbook file (YAML, path from `UPSELL_PLAYBOOKS_FILE`) lists playbooks in order; the first whose segment
matches an alert (and, once the contract is known, its plan and spend) is the account's playbook. The built-in
`default` playbook, the design's own behaviour, always comes last and matches everything, so a file only lists
the exceptions. Each playbook sets the automation level (or leaves it to the alert's severity), the email
template and its A/B variants, the reply timeout, the cooldown, the send window and the follow-up.

The file is validated at load by pydantic; `load_playbooks` raises `PlaybookFileError`, whose `problems` give
each error's line and field, which `upsell playbooks check FILE` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.models import AutomationLevel, ContractData, Severity, UsageAlert
from tasks.content.email import available_templates, check_subject

DEFAULT_PLAYBOOK_NAME = "default"
_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"


def _template_name(name: str | None) -> str | None:
    if name is not None and name not in available_templates():
        known = ", ".join(sorted(available_templates()))
        raise ValueError(f"unknown email template {name!r}; the templates are {known}")
    return name


def _subject_line(line: str | None) -> str | None:
    return None if line is None else check_subject(line)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Segment(Strict):
    """Which accounts a playbook is for; an empty list or a missing bound matches every account."""

    plans: list[str] = Field(default_factory=list, description="Current plans (as the CRM names them).")
    spend_min: float | None = Field(default=None, ge=0, description="Lowest annual spend, inclusive.")
    spend_max: float | None = Field(default=None, ge=0, description="Highest annual spend, exclusive.")
    metrics: list[str] = Field(default_factory=list, description="Metric types of the alert.")
    severities: list[Severity] = Field(default_factory=list, description="Severities of the alert.")

    @model_validator(mode="after")
    def _band(self) -> Segment:
        if self.spend_min is not None and self.spend_max is not None and self.spend_min >= self.spend_max:
            raise ValueError("spend_min must be below spend_max")
        return self

    @property
    def needs_contract(self) -> bool:
        return bool(self.plans) or self.spend_min is not None or self.spend_max is not None

    def matches_alert(self, alert: UsageAlert) -> bool:
        return (not self.metrics or alert.metric_type in self.metrics) and (
            not self.severities or alert.severity in self.severities
        )

    def matches_contract(self, contract: ContractData) -> bool:
        plans = {p.casefold() for p in self.plans}
        return (
            (not plans or contract.current_plan.casefold() in plans)
            and (self.spend_min is None or contract.current_spend >= self.spend_min)
            and (self.spend_max is None or contract.current_spend < self.spend_max)
        )


class SendWindow(Strict):
    """When an email may go out, in the contact's own time zone."""

    start: time = time(9, 0)
    end: time = time(17, 0)
    weekdays: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], description="0 = Monday ... 6 = Sunday.")
    skip_public_holidays: bool = True

    @field_validator("weekdays")
    @classmethod
    def _days(cls, days: list[int]) -> list[int]:
        if not days or any(d < 0 or d > 6 for d in days):
            raise ValueError("weekdays must be a non-empty list of 0 (Monday) to 6 (Sunday)")
        return sorted(set(days))

    @model_validator(mode="after")
    def _order(self) -> SendWindow:
        if self.start >= self.end:
            raise ValueError("start must be before end")
        return self


class FollowUp(Strict):
    """One follow-up email in the same thread when the customer has not answered."""

    after_hours: float = Field(gt=0, description="Hours after the first email.")


class Variant(Strict):
    """An A/B variant of the email: its subject and body templates, and its share of the accounts."""

    name: str = Field(pattern=_NAME)
    weight: float = Field(default=1.0, gt=0)
    subject: str | None = Field(
        default=None, max_length=200, description="Subject line ({company} and {plan} filled in); drafted if unset."
    )
    template: str | None = Field(default=None, description="Body template name; the playbook's if unset.")

    _template = field_validator("template")(_template_name)
    _subject = field_validator("subject")(_subject_line)


class Playbook(Strict):
    """What an account in the segment gets."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    segment: Segment = Field(default_factory=Segment)
    automation_level: AutomationLevel | None = Field(
        default=None, description="Unset: from the alert's severity (critical full, high hybrid, low human)."
    )
    template: str = Field(default="upsell_email", description="The email body template.")
    variants: list[Variant] = Field(default_factory=list)
    reply_timeout_hours: float | None = Field(
        default=None, gt=0, le=24 * 30, description="Unset: the settings' reply timeout (24 h by default)."
    )
    cooldown_hours: float | None = Field(default=None, ge=0, description="Unset: the receiver's cooldown.")
    send_window: SendWindow | None = Field(default=None, description="Unset: send at once.")
    follow_up: FollowUp | None = None

    _template = field_validator("template")(_template_name)

    @model_validator(mode="after")
    def _consistent(self) -> Playbook:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        if len(self.variants) == 1:
            raise ValueError("an experiment needs two or more variants (or none)")
        timeout = self.reply_timeout_hours
        if self.follow_up is not None and timeout is not None and self.follow_up.after_hours >= timeout:
            raise ValueError("follow_up.after_hours must be shorter than reply_timeout_hours")
        return self


DEFAULT_PLAYBOOK = Playbook(name=DEFAULT_PLAYBOOK_NAME, description="The design's behaviour, for every account.")


class PlaybookFile(Strict):
    """The playbooks in the order they are tried; the built-in default is tried last."""

    playbooks: list[Playbook] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PlaybookFile:
        names = [p.name for p in self.playbooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"playbook names must be unique: {', '.join(dupes)}")
        return self

    @property
    def all(self) -> list[Playbook]:
        """The file's playbooks, then the default (unless the file redefines `default`)."""
        if any(p.name == DEFAULT_PLAYBOOK_NAME for p in self.playbooks):
            return list(self.playbooks)
        return [*self.playbooks, DEFAULT_PLAYBOOK]

    def named(self, name: str) -> Playbook:
        for playbook in self.all:
            if playbook.name == name:
                return playbook
        raise KeyError(name)

    def on_alert(self, alert: UsageAlert) -> Playbook | None:
        """The account's playbook when the alert alone decides it, or None when a playbook segmented on plan or
        spend comes first and matches the alert (then only the contract decides: the run chooses once it has it)."""
        for playbook in self.all:
            if playbook.segment.matches_alert(alert):
                return None if playbook.segment.needs_contract else playbook
        return DEFAULT_PLAYBOOK

    def choose(self, alert: UsageAlert, contract: ContractData | None = None) -> Playbook:
        """The first playbook for the alert; segments on plan or spend count only once the contract is known."""
        for playbook in self.all:
            segment = playbook.segment
            if not segment.matches_alert(alert):
                continue
            if segment.needs_contract and (contract is None or not segment.matches_contract(contract)):
                continue
            return playbook
        return DEFAULT_PLAYBOOK


@dataclass(frozen=True)
class Problem:
    """One error of a playbook file: where (line, field) and what."""

    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: {self.field or '(top level)'}: {self.message}"


class PlaybookFileError(ValueError):
    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path, self.problems = path, problems
        super().__init__(f"{path}: {len(problems)} error(s)\n" + "\n".join(str(p) for p in problems))


def _lines(node: yaml.Node | None, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """The 1-based line of every mapping key and sequence item of the YAML document, by its path."""
    found: dict[tuple[Any, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*path, key.value)
            found[here] = key.start_mark.line + 1
            found.update(_lines(value, here))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            here = (*path, index)
            found[here] = item.start_mark.line + 1
            found.update(_lines(item, here))
    return found


def parse_playbooks(text: str, path: Path = Path("<text>")) -> PlaybookFile:
    """Validate a playbook file's text; every error is reported with its line and field."""
    try:
        data = yaml.safe_load(text)
        lines = _lines(yaml.compose(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PlaybookFileError(path, [Problem(line, "", f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if data is None:
        data = {}
    try:
        return PlaybookFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = tuple(error["loc"])
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
            problems.append(Problem(line, ".".join(str(p) for p in loc), error["msg"]))
        raise PlaybookFileError(path, problems) from None


def load_playbooks(path: Path | None) -> PlaybookFile:
    """The playbooks of `path`, or only the built-in default when no file is configured."""
    if path is None:
        return PlaybookFile()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlaybookFileError(path, [Problem(None, "", f"cannot read the file: {exc.strerror or exc}")]) from None
    return parse_playbooks(text, path)
