"""The plan catalogue that both planners recommend from."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from pydantic import BaseModel


class CatalogPlan(BaseModel):
    """One plan tier."""

    name: str
    annual_price: float
    features: list[str]


class Catalogue(BaseModel):
    """Plan tiers, cheapest first."""

    currency: str
    plans: list[CatalogPlan]

    def find(self, name: str) -> CatalogPlan | None:
        wanted = name.strip().lower()
        return next((p for p in self.plans if p.name.lower() == wanted), None)

    def next_tier(self, name: str) -> CatalogPlan:
        """The tier above `name` (the top tier stays the top tier; an unknown plan gets the cheapest)."""
        names = [p.name.lower() for p in self.plans]
        if name.strip().lower() not in names:
            return self.plans[0]
        index = names.index(name.strip().lower())
        return self.plans[min(index + 1, len(self.plans) - 1)]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plans]


@cache
def load_catalogue() -> Catalogue:
    """The bundled catalogue (tasks/fixtures/catalogue.json)."""
    text = resources.files("tasks").joinpath("fixtures/catalogue.json").read_text()
    return Catalogue.model_validate(json.loads(text))
