"""The one typed settings root of a run: `params.yaml` validated into frozen section models at the edge.

`Settings` has one field per `params.yaml` section, each the frozen, `extra="forbid"` model defined next to the
code that uses it. Derived values are filled here and nowhere else: every seed left out (train and its boosters,
calibration, intervals, the propensity booster, split, simulate) becomes the top-level `seed`, and the
training response thresholds come from `labels.response_category`. `load_settings` turns every validation
error into one line naming the file and the key's path, with a near-miss hint for a misspelt key.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from features.config import Day, FeatureConfig, Frozen, LabelConfig, Seed, SplitConfig
from features.response import response_threshold
from models.bundle import BundleConfig
from models.config import PropensityConfig
from models.evaluation import EvaluationConfig
from pipeline.config import ROOT, read_yaml
from pipeline.promote import PromotionRule

#: the seed of every random draw when params.yaml names none (one default, here only).
DEFAULT_SEED = 20261125
#: the evaluation settings the figures were computed with (params.yaml `evaluation:`), written by evaluate beside
#: them and in the run's `evaluate/` artifacts: the clinician page labels intervals and calibration bins from it,
#: never from params.yaml (which may have changed since)
EVALUATION_SETTINGS_FILE = "tables/evaluation_settings.json"


class DataSettings(Frozen):
    """The contract tables the pipeline reads (`data:`) and their extraction date."""

    dir: Path = Path("data/cohort")
    #: the data's extraction date: no record may be dated after it (left out: the stage's own default; written,
    #: it must be a date: dvc.yaml passes it to validate and features as `--today`, where null would be 'None').
    today: Day | None = Field(None, exclude_if=lambda day: day is None)  # a dump re-validates

    @field_validator("today", mode="before")
    @classmethod
    def _today_written_is_a_date(cls, value: Any) -> Any:
        """`today: null` is refused where it is written (the stages would get `--today None`)."""
        if value is None:
            raise ValueError("the data's extraction date (no record may be dated after it), which dvc.yaml passes "
                             "to validate and features as --today: write a date (YYYY-MM-DD), not null")
        return value


class OmopSettings(Frozen):
    """`escalate import omop` (`omop:`): the gap rule that merges drug exposures into regimens (docs/omop.md)."""

    #: exposures of one drug at one dose, route and schedule less than this many days apart are one regimen.
    gap_days: int = Field(default=30, ge=0)


class SimulateSettings(Frozen):
    """The simulated default cohort (`simulate:`): size, mode, its "today" and seed."""

    patients: int = Field(3000, ge=1)
    mode: Literal["observational", "trial"] = "observational"
    #: the cohort's "today": no record is dated after it (None: `data.today`).
    today: Day | None = None
    seed: Seed = DEFAULT_SEED


class ReportSettings(Frozen):
    """The showcase page of the `report` stage (`report:`): whose page, as of when, written where."""

    patient_data: Path = Path("tests/fixtures/seed-case")
    patient: str = "SEED-0001"
    as_of: Day | None = None
    out: Path = Path("data/reports/seed-case.html")

    @field_validator("patient")
    @classmethod
    def _names_a_patient(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("names no patient: give the patient_id whose page the report stage writes")
        return value


class Settings(Frozen):
    """Everything `params.yaml` tunes, validated and with derived values filled (see the module docstring)."""

    seed: Seed = DEFAULT_SEED
    data: DataSettings = DataSettings()
    simulate: SimulateSettings = SimulateSettings()
    evaluation: EvaluationConfig = EvaluationConfig()
    train: BundleConfig = BundleConfig()
    promote: PromotionRule = PromotionRule()
    features: FeatureConfig = FeatureConfig()
    labels: LabelConfig = LabelConfig()
    split: SplitConfig = SplitConfig()
    report: ReportSettings = ReportSettings()
    omop: OmopSettings = OmopSettings()

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, raw: Any) -> Any:
        """The one place derived settings are filled: missing seeds and the response thresholds."""
        return fill_derived(raw) if isinstance(raw, Mapping) else raw

    @model_validator(mode="after")
    def _one_serious_cytopenia(self) -> Settings:
        """The safety features and the safety label count the same cytopenias as serious (a feature of grade ≥ 2
        cytopenias beside a grade ≥ 3 label would describe another event than the one predicted)."""
        grades = self.features.cytopenia_min_grade, self.labels.cytopenia_min_grade
        if grades[0] != grades[1]:
            raise ValueError(f"labels.cytopenia_min_grade: {grades[1]} differs from features.cytopenia_min_grade "
                             f"{grades[0]} (rule: one definition of a serious cytopenia; set both to the same grade)")
        return self

    def logged_params(self) -> dict[str, Any]:
        """The sections that shape data and model, for MLflow params (no `report:`: it names a patient; no
        `simulate:`: `train` logs what simulated its data, `pipeline.train.simulated_with`)."""
        return self.model_dump(mode="json", include=set(LOGGED_SECTIONS))


#: sections logged as MLflow params by `train` (flattened): what shaped the data and the model, each declared by
#: dvc.yaml's train stage (so a run's params never go stale). Not `evaluation:` nor `promote:`: evaluate and
#: promote read them later, may run again with other values, and record what they used in their own outputs.
LOGGED_SECTIONS: tuple[str, ...] = ("seed", "features", "labels", "split", "train")


class SettingsError(ValueError):
    """params.yaml is not valid: one line per problem, each naming the file and the key's path."""


def _section(parent: dict[str, Any], key: str) -> dict[str, Any] | None:
    """`parent[key]` as a fresh dict put back in place ({} when missing or null); None when it is no mapping
    (left for validation to report)."""
    value = parent.get(key)
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        return None
    parent[key] = dict(value)
    return parent[key]


def fill_derived(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of raw params with every missing seed set to the top-level `seed` and the training response
    thresholds set from `labels.response_category` (an explicit, different threshold is an error)."""
    params = dict(raw)
    seed = params.setdefault("seed", DEFAULT_SEED)
    for name in ("simulate", "split"):
        section = _section(params, name)
        if section is not None:
            section.setdefault("seed", seed)
    train = _section(params, "train")
    if train is None:
        return params
    train.setdefault("seed", seed)
    for key in ("booster", "calibration", "intervals", "propensity"):
        sub = _section(train, key)
        if sub is not None and key != "propensity":
            sub.setdefault("seed", seed)
    intervals = train.get("intervals")
    if isinstance(intervals, dict) and isinstance(intervals.get("boot_booster"), Mapping):
        intervals["boot_booster"] = {"seed": seed, **intervals["boot_booster"]}
    propensity = train.get("propensity")
    if isinstance(propensity, dict):
        booster = propensity.get("booster")
        if booster is None:  # the propensity booster's own defaults (fewer trees), seeded like the rest
            booster = PropensityConfig().booster.model_dump(exclude={"seed"})
        if isinstance(booster, Mapping):
            propensity["booster"] = {"seed": seed, **booster}
    labels = params.get("labels")
    category = (labels.get("response_category") if isinstance(labels, Mapping) else None) or \
        LabelConfig().response_category
    if category in ("minimal", "moderate", "major"):
        for key, juvenile in (("response_threshold", False), ("juvenile_response_threshold", True)):
            derived = response_threshold(category, juvenile=juvenile)
            given = train.setdefault(key, derived)
            if isinstance(given, int | float) and float(given) != derived:
                raise ValueError(f"train.{key}: {given} differs from {derived:g}, the threshold of "
                                 f"labels.response_category {category!r} (rule: one definition of response; "
                                 f"set labels.response_category)")
    return params


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (`X`, `X | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _describe(error: Mapping[str, Any]) -> str:
    """`train.boster: unknown key (did you mean 'booster'?)` for one pydantic error of `Settings`."""
    model: type[BaseModel] | None = Settings
    parts: list[str] = []
    loc = tuple(error.get("loc", ()))
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts.append(f"[{part}]")
            continue
        if model is not None and part not in model.model_fields:
            if i < len(loc) - 1:  # a union member's tag, not a key
                continue
            parts.append(f".{part}")
            break
        parts.append(f".{part}" if parts else str(part))
        model = _model_of(model.model_fields[part].annotation) if model is not None else None
    path = "".join(parts).lstrip(".")
    if error.get("type") == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = list(parent.model_fields) if parent is not None else []
        near = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else (f" (known: {', '.join(known)})" if known else "")
        return f"{path}: unknown key{hint}"
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "value_error":
        message = message.removeprefix("Value error, ")
    value = error.get("input")
    hint = error.get("hint", "")  # `_one_per_choice`: the nearest allowed value
    shown = "" if isinstance(value, Mapping | list) or error.get("type") == "missing" else f" (got {value!r}{hint})"
    return f"{path}: {message}{shown}" if path else f"{message}{shown}"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that holds the keys at `loc` (skipping union tags)."""
    model: type[BaseModel] | None = Settings
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        if part in model.model_fields:
            model = _model_of(model.model_fields[part].annotation)
    return model


def settings_from(params: Mapping[str, Any], source: str = "params.yaml") -> Settings:
    """`Settings` from an already read mapping; every problem named as `<source>: <key path>: <what>`."""
    try:
        return Settings.model_validate(params)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        if any(e["loc"] == ("seed",) for e in errors):  # said once: the derived seeds copy it (`fill_derived`)
            errors = [e for e in errors if e["loc"] == ("seed",)
                      or not (e["loc"][-1] == "seed" and e.get("input") == params.get("seed"))]
        lines = [f"{source}: {_describe(e)}" for e in _one_per_choice(errors)]
        raise SettingsError("\n".join(lines)) from None


def _one_per_choice(errors: list[Any]) -> list[Any]:
    """A value outside a choice (a Literal, or a union of Literals such as `learner: LearnerKind | "auto"`) as
    one error naming every allowed value and the nearest (pydantic says it once per union member, under the
    member's tag: `train.learner.literal['s_learner', …]`)."""
    out: list[Any] = []
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in errors:
        if e.get("type") != "literal_error":
            out.append(e)
            continue
        loc = tuple(e["loc"])
        if loc and isinstance(loc[-1], str) and loc[-1].startswith("literal["):  # a union member's tag
            loc = loc[:-1]
        allowed = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
        if loc not in merged:
            merged[loc] = {**e, "loc": loc, "allowed": []}
            out.append(merged[loc])
        merged[loc]["allowed"] += [a for a in allowed if a not in merged[loc]["allowed"]]
    for e in merged.values():
        near = difflib.get_close_matches(str(e.get("input")), e["allowed"], n=1, cutoff=0.6)
        e["msg"] = "not one of " + ", ".join(e["allowed"])
        e["hint"] = f"; did you mean {near[0]!r}?" if near else ""  # inside the "(got …)" brackets
    return out


def load_settings(path: Path | str = "params.yaml") -> Settings:
    """Read and validate `params.yaml` (relative paths: the working directory, else the repository root)."""
    p = Path(path)
    if not p.exists() and not p.is_absolute():
        p = ROOT / p
    if not p.is_file():
        raise SettingsError(f"{path}: no such settings file")
    raw = read_yaml(p)
    if not raw:  # an emptied file (a truncated save) would run every stage on the code's defaults, silently
        raise SettingsError(f"{path}: holds no settings; write at least the sections you set (e.g. `seed: 1`)")
    return settings_from(raw, source=str(path))


def resolve(settings: Settings | Path | str) -> Settings:
    """The settings a stage runs with: as given, or loaded from a params.yaml path."""
    return settings if isinstance(settings, Settings) else load_settings(settings)
