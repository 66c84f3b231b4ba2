"""Frozen settings of decision-point derivation, point-in-time features, outcome labels and the patient split.

Built at the edge from the `features:`, `labels:` and `split:` sections of `params.yaml` and passed into the pure
code in `features/decisions.py`, `features/build.py`, `features/labels.py` and `features/split.py`.
"""

from __future__ import annotations

import types
import typing
from datetime import date
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: a random seed as NumPy takes it (0 … 2³² − 1): a negative or larger one is refused where it is written.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

#: text that says something: surrounding blanks are dropped, and nothing left is refused ("" is no source).
NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

#: the days a `today` or `as_of` may name: from the data contract's earliest birth year to the last day a pandas
#: date reaches; outside them no record could pass the contract (features/contract.py uses the same bounds).
EARLIEST_DAY, LATEST_DAY = date(1900, 1, 1), date(2261, 12, 31)
Day = Annotated[date, Field(ge=EARLIEST_DAY, le=LATEST_DAY)]


@cache
def _kinds(annotation: Any) -> tuple[frozenset[str], Any]:
    """What a field's annotation takes, as ({"bool", "number", "none", "other"} kinds, element annotation of a
    `tuple[X, ...]` or None): `int | None` is {"number", "none"}; a union is the union of its members' kinds."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        element = None
        for arg in typing.get_args(annotation):
            k, e = _kinds(arg)
            kinds |= k
            element = element or e
        return frozenset(kinds), element
    if annotation is bool:
        return frozenset({"bool"}), None
    if annotation in (int, float):
        return frozenset({"number"}), None
    if annotation is type(None):
        return frozenset({"none"}), None
    args = typing.get_args(annotation)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return frozenset({"other"}), args[0]
    return frozenset({"other"}), None


def exact_kind(value: Any, annotation: Any) -> str | None:
    """Why `value` (as read from YAML) is the wrong kind for `annotation`, or None: true/false where a number
    belongs (pydantic reads true as 1), a number or text where true/false belongs (it reads 1 or "yes" as true),
    text where a number belongs ("12"); the elements of a `tuple[X, ...]` likewise."""
    kinds, element = _kinds(annotation)
    if element is not None and isinstance(value, list | tuple):
        return next((f"item {i}: {why}" for i, v in enumerate(value) if (why := exact_kind(v, element))), None)
    if "other" in kinds:
        return None
    if isinstance(value, bool):
        return None if "bool" in kinds else "a number, not true/false"
    if kinds & {"bool", "number"} == {"bool"} and isinstance(value, int | float | str):
        return "true or false (unquoted), not a number or text"
    if "number" in kinds and isinstance(value, str):
        return "a number (unquoted), not text"
    return None


class Frozen(BaseModel):
    """The base of every settings and reference model: immutable, no unknown key (a misspelt one is named), no NaN
    or infinity (`.nan` in a YAML file is refused where it is written), and each value of the kind its field
    takes: no true/false for a number, no number or text for true/false (`exact_kind`; an int for a float is
    fine)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _exact_kind(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse a value pydantic would silently convert across kinds (`seed: true` as seed 1)."""
        field = cls.model_fields.get(info.field_name or "")
        why = exact_kind(value, field.annotation) if field is not None else None
        if why is not None:
            raise ValueError(why)
        return value


class ActivityRule(Frozen):
    """Active disease at a visit: any one criterion met (physician global, CDASI activity or weak MMT-8)."""

    physician_global_min_cm: float | None = Field(2.0, ge=0, le=10)
    cdasi_activity_min: float | None = Field(14.0, ge=0, le=100)
    #: MMT-8 below this percentage of its scale maximum (80 or 150) counts as active muscle disease.
    mmt8_below_percent: float | None = Field(90.0, gt=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> ActivityRule:
        if self.physician_global_min_cm is None and self.cdasi_activity_min is None and self.mmt8_below_percent is None:
            raise ValueError("the activity rule needs at least one criterion")
        return self


class DecisionConfig(Frozen):
    """How decision points and the option taken are read from raw history (records have no decision table)."""

    activity: ActivityRule = ActivityRule()
    #: the regimen must be unchanged for at least this long before the visit (about 3 months).
    stable_days: int = Field(91, ge=0)
    #: a later decision point needs at least this long since the previous one (one escalation at a time).
    min_gap_days: int = Field(140, ge=0)
    #: regimen changes started within [visit, visit + window] are the option taken at that visit.
    option_window_days: int = Field(30, ge=0)
    #: changes of these drug classes do not make an option (a steroid taper alongside is routine care).
    option_ignore_classes: tuple[str, ...] = ("glucocorticoid",)
    #: changes of these drug classes do not break stability: a steroid taper or a flare dose alongside an unchanged
    #: regimen is routine care, not a new regimen (without it, tapers hide a third of the decision points).
    stability_ignore_classes: tuple[str, ...] = ("glucocorticoid",)
    #: a decision needs at least one current (non-ignored) drug: refractory disease is disease despite treatment.
    require_treatment: bool = True
    #: a dose change of at most this fraction of the current intensity is not a change (rounding in records).
    dose_change_tolerance: float = Field(0.05, ge=0, lt=1)


class FeatureConfig(Frozen):
    """Point-in-time feature settings: the regimen lag, look-back windows and dose-versus-target tolerance."""

    decisions: DecisionConfig = DecisionConfig()
    #: regimen rows count only if started before as_of − lag (changes on the decision visit's day belong to it:
    #: as_of is the visit day + 1, so a lag of 0 would make the option taken a feature of its own decision).
    regimen_lag_days: int = Field(1, ge=1)
    change_windows_days: tuple[int, ...] = (91, 182)
    worst_window_days: int = Field(365, gt=0)
    safety_windows_days: tuple[int, ...] = (182, 365)
    #: a dose within ±tolerance of its target band counts as "at target".
    dose_tolerance: float = Field(0.1, ge=0, lt=1)
    #: rows of one drug separated by at most this gap are one continuous exposure ("months on drug").
    continuity_gap_days: int = Field(7, ge=0)
    #: a grade at or above this makes a cytopenia serious (safety features and label).
    cytopenia_min_grade: int = Field(3, ge=1, le=4)

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        for name in ("change_windows_days", "safety_windows_days"):
            values = getattr(self, name)
            if not values or any(v <= 0 for v in values) or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct positive day counts, got {values}")
        return self


class LabelConfig(Frozen):
    """Outcome labels after a decision: follow-up visit, response threshold, skin response and safety window."""

    horizon_weeks: int = Field(24, gt=0)
    window_weeks: int = Field(6, ge=0)
    #: a core set measure missing at a visit is carried forward from at most this many days before.
    carry_forward_days: int = Field(30, ge=0)
    response_category: Literal["minimal", "moderate", "major"] = "moderate"
    skin_response_drop: float = Field(5.0, gt=0)
    #: the events that make the safety outcome (at least one: an empty list would label every decision safe)
    safety_events: tuple[str, ...] = Field(("serious_infection", "opportunistic_infection", "cytopenia"),
                                           min_length=1)
    cytopenia_min_grade: int = Field(3, ge=1, le=4)
    #: steroid sparing = prednisone at or below this (mg/day) at follow-up with no dose rise in between (EULAR
    #: glucocorticoid taper goal for maintenance, ≤ 7.5 mg/day; docs/sources.md §4).
    steroid_goal_mg_day: float = Field(7.5, ge=0)

    @model_validator(mode="after")
    def _window_inside_horizon(self) -> LabelConfig:
        if self.window_weeks >= self.horizon_weeks:  # else a visit days after the decision would be its outcome
            raise ValueError(f"window_weeks {self.window_weeks} must be below horizon_weeks {self.horizon_weeks} "
                             "(the follow-up visit is read within ± window of the horizon, after the decision)")
        return self


class SplitConfig(Frozen):
    """Patient-level train/test split by hashing patient ids with the seed (stable as patients are added)."""

    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: Seed = 20261125
