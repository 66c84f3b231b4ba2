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


class LabTest(Frozen):
    """One graded lab: below a lower limit (`lln`, CTCAE `below` thresholds, falling) or above an upper one (`uln`,
    `above_x_uln` multiples, rising)."""

    measure: str
    label: str
    unit: str
    lln: float | None = Field(None, gt=0)
    below: tuple[float, ...] = ()
    uln: float | None = Field(None, gt=0)
    above_x_uln: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _one_direction_in_order(self) -> LabTest:
        low, high = self.lln is not None and bool(self.below), self.uln is not None and bool(self.above_x_uln)
        if low == high:
            raise ValueError("give either lln with below or uln with above_x_uln (rule: one direction per lab)")
        steps = list(self.below) if low else list(self.above_x_uln)
        ordered = all(a > b for a, b in zip([self.lln, *steps], steps, strict=False)) if low else \
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
    return rules.model_dump(exclude_none=True, exclude_defaults=True)  # as written: a lab has one direction


def monitoring(raw: dict[str, Any], generics: tuple[str, ...]) -> dict[str, Any]:
    """`monitoring.yaml` checked (its reminders name drugs of drugs.yaml by generic); the mapping."""
    checked = Monitoring.model_validate(raw)
    unknown = sorted({d for r in checked.reminders for d in r.drugs} - set(generics))
    if unknown:
        raise ValueError(f"drug(s) {unknown} not in configs/drugs.yaml (rule: a generic name)")
    return checked.model_dump()
