"""The clinician page's reference data, validated: `configs/clinical_rules.yaml` (lab grading, disease notes,
staleness) and `configs/monitoring.yaml` (reminders per drug).

A misspelt key once dropped every reminder from the page without a word, and a missing one ended in a KeyError;
each file is now checked whole (unknown keys, grade thresholds in order, the measures and drugs it names known to
the other reference files) before a page is built, and handed on as the plain mapping the page code reads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from features.config import Frozen


class ReferenceRange(Frozen):
    """A lab's reference range for one sex: below `lln` or above `uln` is outside it."""

    lln: float = Field(ge=0)
    uln: float = Field(gt=0)


class LabTest(Frozen):
    """One graded lab: its reference range (`lln`–`uln`, by sex where it differs) and one graded side — below the
    lower limit (`below` thresholds, falling) or above the upper one (`above_x_uln` multiples, rising). A value
    outside the range on the other side has no grade and is said to be outside the range, never normal."""

    measure: str
    label: str
    unit: str
    lln: float = Field(ge=0)
    uln: float = Field(gt=0)
    by_sex: dict[Literal["F", "M"], ReferenceRange] = Field(default_factory=dict)
    below: tuple[float, ...] = ()
    above_x_uln: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _one_direction_in_order(self) -> LabTest:
        if bool(self.below) == bool(self.above_x_uln):
            raise ValueError("give either below or above_x_uln (rule: one graded direction per lab)")
        ranges = {"": ReferenceRange(lln=self.lln, uln=self.uln), **self.by_sex}
        empty = [f"{sex or 'all'} {r.lln:g}–{r.uln:g}" for sex, r in ranges.items() if not r.lln < r.uln]
        if empty:
            raise ValueError(f"reference range {empty[0]} is empty (rule: lln below uln)")
        for r in ranges.values():
            steps = list(self.below) if self.below else list(self.above_x_uln)
            ordered = all(a > b for a, b in zip([r.lln, *steps], steps, strict=False)) if self.below else \
                all(a < b for a, b in zip([1.0, *steps], steps, strict=False))
            if not ordered:
                raise ValueError(f"thresholds {steps} out of order (rule: grades grow away from the limit of normal)")
        return self


class Labs(Frozen):
    flag_grade: int = Field(ge=1, le=4)
    tests: tuple[LabTest, ...] = Field(min_length=1)


class DiseaseNote(Frozen):
    when: dict[Literal["antibody", "ild", "cancer_associated", "diagnosis"], str | bool] = Field(min_length=1)
    note: str = Field(min_length=1)


class ClinicalRules(Frozen):
    labs: Labs
    disease_notes: tuple[DiseaseNote, ...] = ()
    stale_after_days: dict[str, int] = Field(default_factory=lambda: {"default": 45})

    @model_validator(mode="after")
    def _positive_ages(self) -> ClinicalRules:
        bad = {k: v for k, v in self.stale_after_days.items() if v <= 0}
        if bad:
            raise ValueError(f"stale_after_days {bad}: days must be positive")
        return self


class Check(Frozen):
    test: str = Field(min_length=1)
    when: str = Field(min_length=1)
    why: str = Field(min_length=1)


class Reminder(Check):
    drugs: tuple[str, ...] = Field(min_length=1)


class Monitoring(Frozen):
    always: tuple[Check, ...] = ()
    reminders: tuple[Reminder, ...] = ()


def clinical_rules(raw: dict[str, Any], measures: tuple[str, ...]) -> dict[str, Any]:
    """`clinical_rules.yaml` checked (its labs and staleness keys name measures of measures.yaml); the mapping."""
    rules = ClinicalRules.model_validate(raw)
    named = {t.measure for t in rules.labs.tests} | (set(rules.stale_after_days) - {"default"})
    unknown = sorted(named - set(measures))
    if unknown:
        raise ValueError(f"measure(s) {unknown} not in configs/measures.yaml (rule: a known measure)")
    return rules.model_dump(exclude_none=True, exclude_defaults=True)  # as written: one graded direction


def monitoring(raw: dict[str, Any], generics: tuple[str, ...]) -> dict[str, Any]:
    """`monitoring.yaml` checked (its reminders name drugs of drugs.yaml by generic); the mapping."""
    checked = Monitoring.model_validate(raw)
    unknown = sorted({d for r in checked.reminders for d in r.drugs} - set(generics))
    if unknown:
        raise ValueError(f"drug(s) {unknown} not in configs/drugs.yaml (rule: a generic name)")
    return checked.model_dump()
