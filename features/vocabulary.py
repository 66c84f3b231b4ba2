"""Drug vocabulary, dose targets and the escalation-option catalogue (reference data from `configs/`).

Records name drugs as clinicians write them (brands, abbreviations, misspellings) and give doses in mixed units
and schedules; everything downstream works on a generic name and a dose intensity in mg/day, compared with the
target the clinical recommendation checks before adding drugs (docs/sources.md §4).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, model_validator

from features.config import Frozen, NonBlank

DAYS_PER_MONTH = 365.25 / 12

#: dose units of the contract and their factor to mg (per kg / per m² stays per kg / per m²).
DOSE_UNITS: dict[str, tuple[float, str]] = {
    "mg": (1.0, "mg"),
    "g": (1000.0, "mg"),
    "mg/kg": (1.0, "mg_per_kg"),
    "g/kg": (1000.0, "mg_per_kg"),
    "mg/m2": (1.0, "mg_per_m2"),
    "mg/m²": (1.0, "mg_per_m2"),
    "g/m2": (1000.0, "mg_per_m2"),
    "g/m²": (1000.0, "mg_per_m2"),
}


class _Frozen(Frozen):
    """`Frozen` (immutable, no unknown key, no NaN, values of their field's kind) that also takes a field's name
    where it has an alias (`with`)."""

    model_config = ConfigDict(populate_by_name=True)


class WeightBand(_Frozen):
    """A fixed dose per administration for body weights below `below_kg` (from the band below it, or the target's
    `min_kg`); the last band leaves `below_kg` out (no upper bound)."""

    below_kg: float | None = Field(default=None, gt=0)
    mg: float = Field(gt=0)


class DoseTarget(_Frozen):
    """The target regimen of one drug: a band of the dose per administration on a schedule.

    A juvenile target (`Drug.juvenile`) may also say from which weight (`adult_from_kg`) or above which body surface
    (`adult_above_m2`) the adult target applies — the labels' "≥ 75 kg: the adult dose" —, below which weight there is
    no labelled dose (`min_kg`), that a dose below its band is a taper rather than a shortfall (`induction_only`),
    and how it reads (`text`)."""

    basis: Literal["mg", "mg_per_kg", "mg_per_m2"] = "mg"
    low: float | None = Field(default=None, gt=0)
    high: float | None = Field(default=None, gt=0)
    doses_per_cycle: float = Field(default=1.0, gt=0)
    cycle_days: float = Field(default=1.0, gt=0)
    route: str | None = None
    max_mg_per_administration: float | None = Field(default=None, gt=0)
    #: cap on the target intensity (mg/day): a child's per-kg dose never exceeds the adult maximum
    max_mg_per_day: float | None = Field(default=None, gt=0)
    daily_cap_mg_per_kg: float | None = Field(default=None, gt=0)
    weight_bands: tuple[WeightBand, ...] = ()
    alternatives: tuple[DoseTarget, ...] = ()
    taper_goal_mg_per_day: float | None = Field(default=None, ge=0)
    min_kg: float | None = Field(default=None, gt=0)
    adult_from_kg: float | None = Field(default=None, gt=0)
    adult_above_m2: float | None = Field(default=None, gt=0)
    induction_only: bool = False
    #: one administration of a cycle longer than a week, as the page says it ("an infusion", "a course")
    per_dose: str | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DoseTarget:
        if self.low is not None and self.high is not None and self.high < self.low:
            raise ValueError(f"target band high {self.high} is below low {self.low}")
        if self.weight_bands and (self.basis != "mg" or self.low is not None):
            raise ValueError("weight_bands give fixed mg doses: basis mg and no low/high")
        open_ended = [b for b in self.weight_bands if b.below_kg is None]
        if len(open_ended) > 1 or (open_ended and self.weight_bands[-1].below_kg is not None):
            raise ValueError("only the last weight band may leave below_kg out")
        limits = [b.below_kg for b in self.weight_bands if b.below_kg is not None]
        if limits != sorted(limits) or len(set(limits)) != len(limits):
            raise ValueError("weight bands must be listed by increasing below_kg")
        return self

    @property
    def has_target(self) -> bool:
        return self.low is not None or bool(self.weight_bands)


Route = Literal["oral", "intravenous", "subcutaneous"]

#: the dose bases a plausible-dose limit may bound (per administration) plus the daily intensity.
LIMIT_BASES: tuple[str, ...] = ("mg", "mg_per_kg", "mg_per_m2", "mg_per_day")


class DoseLimit(_Frozen):
    """Upper bounds of a plausible dose: per administration in mg (fixed, or resolved from a per-kg / per-m² dose),
    as written per kg or per m², and as daily intensity (mg/day). An unset bound is not checked."""

    mg: float | None = Field(default=None, gt=0)
    mg_per_kg: float | None = Field(default=None, gt=0)
    mg_per_m2: float | None = Field(default=None, gt=0)
    mg_per_day: float | None = Field(default=None, gt=0)


class PlausibleDose(DoseLimit):
    """A drug's plausible dose range: beyond it a record is an entry error (a screen, not a clinical limit);
    `routes` overrides bounds for one route (an intravenous methylprednisolone pulse is not an oral dose)."""

    routes: dict[Route, DoseLimit] = Field(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        if all(getattr(self, b) is None for b in LIMIT_BASES):
            raise ValueError("a plausible dose range needs at least one bound (mg, mg_per_kg, mg_per_m2, mg_per_day)")

    def for_route(self, route: str | None) -> DoseLimit:
        """The bounds that apply on `route`: the route's own where it sets them, else the drug's."""
        own = self.routes.get(route) if route is not None else None  # type: ignore[call-overload]
        if own is None:
            return DoseLimit(**{b: getattr(self, b) for b in LIMIT_BASES})
        return DoseLimit(**{b: getattr(own, b) if getattr(own, b) is not None else getattr(self, b)
                            for b in LIMIT_BASES})


class Drug(_Frozen):
    generic: str
    label: str
    drug_class: str = Field(alias="class")
    immunosuppressant: bool
    aliases: tuple[str, ...]
    target: DoseTarget
    plausible: PlausibleDose
    text: str
    #: the target of a juvenile decision (`Vocabulary.is_juvenile`); None keeps the adult target at every age.
    #: A juvenile target without a dose (only `text`) means no paediatric target: the dose is not judged.
    juvenile: DoseTarget | None = None

    @model_validator(mode="after")
    def _juvenile_only_fields(self) -> Drug:
        for t in (self.target, *self.target.alternatives):
            if t.adult_from_kg is not None or t.adult_above_m2 is not None:
                raise ValueError(f"drug {self.generic!r}: adult_from_kg / adult_above_m2 belong to its juvenile "
                                 "target, not the adult one")
        if self.juvenile is not None and not self.juvenile.text:
            raise ValueError(f"drug {self.generic!r}: a juvenile target needs a `text` saying what it is and its source")
        return self


class Vocabulary(_Frozen):
    """All known drugs; looks up what a record wrote and computes target intensities."""

    drugs: tuple[Drug, ...]
    #: a decision is juvenile when the patient is younger than this (years) at it (`is_juvenile`)
    juvenile_age: float = Field(18, gt=0)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Vocabulary:
        return cls.model_validate(config)

    def model_post_init(self, __context: Any) -> None:
        twice = repeated(self.generics)
        if twice:
            raise ValueError(f"drug(s) {twice} listed twice (rule: one entry per generic)")
        index = alias_index({d.generic: (d.label, *d.aliases) for d in self.drugs}, _key, what="drug")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_by_generic", {d.generic: d for d in self.drugs})

    @property
    def generics(self) -> tuple[str, ...]:
        return tuple(d.generic for d in self.drugs)

    def drug(self, generic: str) -> Drug:
        return self._by_generic[generic]  # type: ignore[attr-defined]

    def lookup(self, written: str) -> str | None:
        """Generic name for a drug as written ("IVIG (Privigen)", "CellCept", "Plaquinil"), or None."""
        if written is None or (isinstance(written, float) and np.isnan(written)):
            return None
        index: dict[str, str] = self._index  # type: ignore[attr-defined]
        key = _key(written)
        if key in index:
            return index[key]
        # "IVIG (Privigen)", "Xeljanz XR 11 mg": try the text outside and inside brackets, then each word.
        parts = [p for p in re.split(r"[()\[\],/]+", key) if p.strip()]
        for part in parts:
            if part.strip() in index:
                return index[part.strip()]
        for word in key.replace("(", " ").replace(")", " ").split():
            if word in index:
                return index[word]
        return None

    def closest(self, written: str, n: int = 3) -> list[str]:
        """The known names nearest to an unknown one, for the error message."""
        index: dict[str, str] = self._index  # type: ignore[attr-defined]
        matches = difflib.get_close_matches(_key(str(written)), list(index), n=n * 3, cutoff=0.5)
        out: list[str] = []
        for m in matches:
            label = f"{m} ({index[m]})" if m != index[m] else m
            if label not in out:
                out.append(label)
        return out[:n]

    def lookup_many(self, written: pd.Series) -> pd.Series:
        """Vectorised `lookup`: each distinct spelling is resolved once."""
        uniques = pd.Series(written.dropna().unique())
        mapping = {u: self.lookup(u) for u in uniques}
        return written.map(mapping).astype("object")

    def plausible_limits(self, generic: pd.Series, route: pd.Series) -> pd.DataFrame:
        """The plausible-dose bounds of each row's drug on its route: one column per `LIMIT_BASES` (NaN = none)."""
        routes = Route.__args__  # type: ignore[attr-defined]
        table = pd.DataFrame(
            [{"generic": d.generic, "route": r or "", **d.plausible.for_route(r).model_dump()}
             for d in self.drugs for r in (*routes, None)]
        ).astype({b: float for b in LIMIT_BASES})
        keys = pd.DataFrame({"generic": generic.astype(object).to_numpy(),
                             "route": route.astype(object).where(route.isin(routes), "").to_numpy()})
        out = keys.merge(table, on=["generic", "route"], how="left")[list(LIMIT_BASES)]
        return out.set_axis(generic.index)

    def is_juvenile(self, diagnosis: pd.Series | np.ndarray, age_years: pd.Series | np.ndarray) -> np.ndarray:
        """Juvenile decisions: younger than `juvenile_age` at the decision; where the age is unknown, a diagnosis of
        juvenile DM. A juvenile-onset patient who is now an adult is dosed as an adult (as in the simulator).
        Features and the clinician page share this rule."""
        d = np.asarray(diagnosis, dtype=object)
        a = pd.to_numeric(pd.Series(np.asarray(age_years, dtype=object)), errors="coerce").to_numpy(float)
        with np.errstate(invalid="ignore"):
            return np.where(np.isnan(a), d == JUVENILE_DIAGNOSIS, a < self.juvenile_age)

    def target_daily_mg(
        self,
        generic: pd.Series,
        route: pd.Series,
        weight_kg: pd.Series,
        bsa_m2: pd.Series,
        juvenile: pd.Series | np.ndarray | None = None,
    ) -> pd.DataFrame:
        """The target each row's dose is judged against, as dose intensity (mg/day), and which target it is.

        Columns: `target_low`, `target_high` (mg/day; NaN without a target or without the body size it needs — a
        missing weight leaves the target missing rather than guessed), `target_text` (how it reads: the adult text,
        or for a juvenile row the juvenile target with the weight band that applies), `target_source` ("adult",
        "juvenile"; "" for an unknown drug), `target_defined` (the row has a target, known or not), `target_by`
        ("weight" / "weight and height": what the band depends on, "" for a fixed dose), `target_needs` (the same
        where that body size is missing, else ""), `induction_only`, and the target's
        `target_basis`, `target_doses_per_cycle`, `target_cycle_days`, `target_per_dose` (for saying it per dose).
        Rows where `juvenile` is True use the drug's juvenile target where it has one (from its `adult_from_kg` /
        above its `adult_above_m2`, the adult target); glucocorticoids' adult target is a taper goal (no band).
        """
        n = len(generic)
        out = _Targets(n)
        g = generic.to_numpy(dtype=object)
        r = route.fillna("").astype(str).str.lower().to_numpy(dtype=object)
        w = pd.to_numeric(weight_kg, errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(bsa_m2, errors="coerce").to_numpy(dtype=float)
        kid = np.zeros(n, dtype=bool) if juvenile is None else np.asarray(juvenile, dtype=bool).reshape(n)
        for drug in self.drugs:
            sel = g == drug.generic
            if not sel.any():
                continue
            child = sel & kid if drug.juvenile is not None else np.zeros(n, dtype=bool)
            for t, m in _by_route(drug.target, sel & ~child, r):
                out.fill(t, m, w, b, "adult", np.full(n, drug.text, dtype=object))
            if not child.any():
                continue
            for jt, m in _by_route(drug.juvenile, child, r):  # type: ignore[arg-type]
                with np.errstate(invalid="ignore"):
                    grown = m & ((w >= (jt.adult_from_kg or np.inf)) | (b > (jt.adult_above_m2 or np.inf)))
                out.fill(jt, m & ~grown, w, b, "juvenile", _juvenile_text(jt, w))
                if grown.any():  # the label's "from 75 kg: the adult dose"
                    from_ = (f"from {_kg(jt.adult_from_kg)} kg" if jt.adult_from_kg is not None
                             else f"above {jt.adult_above_m2:g} m²")
                    source = f" — {jt.text}" if jt.adult_from_kg is not None else ""  # "JIA label dose …"
                    for t, mm in _by_route(drug.target, grown, r):
                        adult = (_band_text(t, w) if t.weight_bands else np.full(n, drug.text if t is drug.target
                                                                                 else _dose_words(t), dtype=object))
                        out.fill(t, mm, w, b, "juvenile", f"the adult dose {from_}: " + adult.astype(str) + source)
        return out.frame(generic.index)


#: the diagnosis code that makes a decision juvenile where the age is unknown (docs/data-contract.md)
JUVENILE_DIAGNOSIS = "juvenile_dermatomyositis"

class _Targets:
    """The per-row arrays `target_daily_mg` fills, one target and row mask at a time."""

    def __init__(self, n: int) -> None:
        self.low, self.high = np.full(n, np.nan), np.full(n, np.nan)
        self.doses, self.days = np.full(n, np.nan), np.full(n, np.nan)
        self.text = np.full(n, None, dtype=object)
        self.source = np.full(n, "", dtype=object)
        self.needs = np.full(n, "", dtype=object)
        self.by = np.full(n, "", dtype=object)
        self.basis = np.full(n, "", dtype=object)
        self.per_dose = np.full(n, "", dtype=object)
        self.defined = np.zeros(n, dtype=bool)
        self.induction = np.zeros(n, dtype=bool)

    def fill(self, target: DoseTarget, m: np.ndarray, w: np.ndarray, b: np.ndarray, source: str,
             text: np.ndarray) -> None:
        if not m.any():
            return
        self.text[m], self.source[m] = text[m], source
        self.basis[m], self.per_dose[m] = target.basis, target.per_dose or ""
        self.doses[m], self.days[m] = target.doses_per_cycle, target.cycle_days
        self.induction[m] = target.induction_only
        if not target.has_target:
            return
        with np.errstate(invalid="ignore"):
            unlabelled = m & (w < (target.min_kg or 0.0))  # no labelled dose this light: no target
        defined = m & ~unlabelled
        self.defined[defined] = True
        lo, hi = _target_band_mg(target, w[defined], b[defined])
        self.low[defined], self.high[defined] = lo, hi
        size = b if target.basis == "mg_per_m2" else w
        if target.basis != "mg" or target.weight_bands or target.daily_cap_mg_per_kg is not None:
            by = "weight and height" if target.basis == "mg_per_m2" else "weight"
            self.by[defined] = by
            self.needs[defined & np.isnan(size)] = by

    def frame(self, index: pd.Index) -> pd.DataFrame:
        return pd.DataFrame(
            {"target_low": self.low, "target_high": self.high, "target_text": self.text,
             "target_source": self.source, "target_defined": self.defined, "target_needs": self.needs,
             "target_by": self.by,
             "induction_only": self.induction, "target_basis": self.basis, "target_doses_per_cycle": self.doses,
             "target_cycle_days": self.days, "target_per_dose": self.per_dose},
            index=index,
        )


def _by_route(target: DoseTarget, mask: np.ndarray, route: np.ndarray) -> list[tuple[DoseTarget, np.ndarray]]:
    """The target's route-specific alternatives for rows on that route, the target itself for the rest."""
    main = mask.copy()
    out = []
    for alt in target.alternatives:
        on_alt = mask & (route == (alt.route or "").lower())
        main &= ~on_alt
        out.append((alt, on_alt))
    return [(target, main), *out]


def dose_status(intensity: np.ndarray, low: np.ndarray, high: np.ndarray, defined: np.ndarray,
                induction_only: np.ndarray, tolerance: float) -> np.ndarray:
    """The verdict on each dose: "below" / "at" / "above" its target band (± `tolerance` of the band's edges),
    "unknown" when it has a target but the dose or the target (missing body size) is unknown, "no_target" when it
    has none — or when an induction-only target (juvenile prednisone) is not exceeded: a taper is no shortfall.
    Features' flags and the clinician page's verdict both come from here."""
    x = np.asarray(intensity, dtype=float)
    lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    with np.errstate(invalid="ignore"):
        below = x < lo * (1 - tolerance)
        above = x > hi * (1 + tolerance)
    induction = np.asarray(induction_only, dtype=bool)
    status = np.where(below, "below", np.where(above, "above", "at")).astype(object)
    status = np.where(induction & ~above, "no_target", status)
    status = np.where(np.isnan(x) | np.isnan(lo), "unknown", status)
    return np.where(np.asarray(defined, dtype=bool), status, "no_target").astype(object)


def _schedule_words(doses_per_cycle: float, cycle_days: float) -> str:
    """'daily', 'twice daily', 'weekly', 'every 4 weeks': a target's schedule as a prescriber says it."""
    times = {1: "", 2: "twice ", 3: "three times "}.get(int(doses_per_cycle), f"{doses_per_cycle:g} times ")
    if cycle_days == 1:
        return f"{times}daily"
    if cycle_days == 7:
        return f"{times}weekly"
    every = f"every {cycle_days / 7:g} weeks" if cycle_days % 7 == 0 else f"every {cycle_days:g} days"
    return (f"{times.strip()} " if times else "") + every


def _kg(value: float) -> str:
    return f"{round(value, 1):g}"


def _dose_words(target: DoseTarget) -> str:
    """A banded target's dose as it reads: '10 mg/kg every 4 weeks', '125 mg weekly', '2–5 mg/kg daily'."""
    per = {"mg": "mg", "mg_per_kg": "mg/kg", "mg_per_m2": "mg/m²"}[target.basis]
    dose = f"{target.low:g}" if target.high in (None, target.low) else f"{target.low:g}–{target.high:g}"
    return f"{dose} {per} {_schedule_words(target.doses_per_cycle, target.cycle_days)}"


def _band_text(target: DoseTarget, weight: np.ndarray) -> np.ndarray:
    """Per row, the weight band that applies as it reads: '87.5 mg weekly (25–50 kg)' ('' without a weight)."""
    text = np.full(len(weight), "", dtype=object)
    lower = target.min_kg
    when = _schedule_words(target.doses_per_cycle, target.cycle_days)
    for band in target.weight_bands:
        upper = band.below_kg
        span = (f"≥ {_kg(lower)} kg" if upper is None and lower is not None
                else f"< {_kg(upper)} kg" if lower is None and upper is not None
                else f"{_kg(lower)}–{_kg(upper)} kg" if lower is not None and upper is not None else "any weight")
        with np.errstate(invalid="ignore"):
            m = (weight >= (lower or 0.0)) & (weight < (upper if upper is not None else np.inf))
        text[m] = f"{band.mg:g} mg {when} ({span})"
        lower = upper
    return text


def _juvenile_text(target: DoseTarget, weight: np.ndarray) -> np.ndarray:
    """How a juvenile target reads on a row: the weight band or per-kg dose that applies with its weight range
    ('10 mg/kg every 4 weeks (< 75 kg)'), then the target's own text (its source); the text alone when the target
    has no weight limits; 'no labelled dose below 10 kg' for a lighter child."""
    n = len(weight)
    own = np.full(n, target.text or "", dtype=object)
    if target.weight_bands:
        applies = _band_text(target, weight)
    elif target.adult_from_kg is not None and target.low is not None:
        applies = np.full(n, f"{_dose_words(target)} (< {_kg(target.adult_from_kg)} kg)", dtype=object)
    else:
        return own
    out = np.where(applies != "", applies + " — " + own, own)
    if target.min_kg is not None:
        with np.errstate(invalid="ignore"):
            light = weight < target.min_kg
        out = np.where(light, f"no labelled dose below {_kg(target.min_kg)} kg — " + own, out)
    return out


def _target_band_mg(target: DoseTarget, weight: np.ndarray, bsa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Target band in mg/day for rows with the given weight and BSA."""
    if target.weight_bands:
        per_admin = np.full(len(weight), np.nan)
        for band in reversed(target.weight_bands):  # listed by increasing weight: the lightest band wins
            limit = band.below_kg if band.below_kg is not None else np.inf
            per_admin = np.where(weight < limit, band.mg, per_admin)
        per_admin = np.where(np.isnan(weight), np.nan, per_admin)
        lo = hi = per_admin
    else:
        scale = {"mg": np.ones_like(weight), "mg_per_kg": weight, "mg_per_m2": bsa}[target.basis]
        lo = target.low * scale
        hi = (target.high if target.high is not None else target.low) * scale
    if target.max_mg_per_administration is not None:
        lo = np.minimum(lo, target.max_mg_per_administration)
        hi = np.minimum(hi, target.max_mg_per_administration)
    per_day = target.doses_per_cycle / target.cycle_days
    lo, hi = lo * per_day, hi * per_day
    if target.max_mg_per_day is not None:
        lo, hi = np.minimum(lo, target.max_mg_per_day), np.minimum(hi, target.max_mg_per_day)
    if target.daily_cap_mg_per_kg is not None:
        cap = target.daily_cap_mg_per_kg * weight
        hi = np.minimum(hi, cap)
        lo = np.minimum(lo, hi)
    return lo, hi


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", str(name).strip().lower().replace("®", "").replace("™", ""))


def repeated(values: Iterable[str]) -> list[str]:
    """The values written more than once, sorted: for lists whose entries must be unique (names, columns)."""
    return sorted(v for v, n in Counter(values).items() if n > 1)


def alias_index(codes: Mapping[str, Iterable[str]], key: Callable[[Any], str], what: str = "code") -> dict[str, str]:
    """Alias key → code, each code standing for itself and its aliases; an alias written for two codes is refused
    (the later one would silently win)."""
    index: dict[str, str] = {}
    for code, aliases in codes.items():
        for name in (code, *aliases):
            k = key(name)
            if index.get(k, code) != code:
                raise ValueError(f"alias {name!r} names both {index[k]!r} and {code!r} (rule: one {what} per alias)")
            index[k] = code
    return index


# --- schedules -------------------------------------------------------------------------------------------------
_WORD_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "six": 6, "eight": 8, "twelve": 12}
_PER_DAY = {
    "daily": 1, "once daily": 1, "every day": 1, "qd": 1, "od": 1, "at night": 1, "every morning": 1,
    "twice daily": 2, "bid": 2, "b.i.d.": 2, "twice a day": 2, "two times daily": 2, "every 12 hours": 2,
    "three times daily": 3, "tid": 3, "t.i.d.": 3, "three times a day": 3, "every 8 hours": 3,
    "four times daily": 4, "qid": 4,
}
_UNIT_DAYS = {"day": 1.0, "days": 1.0, "week": 7.0, "weeks": 7.0, "month": DAYS_PER_MONTH,
              "months": DAYS_PER_MONTH, "year": 365.25, "years": 365.25}


def parse_interval(text: str) -> tuple[float, float] | None:
    """Schedule text → (doses per cycle, cycle length in days); None when it cannot be read.

    Understands "daily", "twice daily", "weekly", "every 4 weeks", "every N days/months", "monthly", "once",
    and course schedules such as "days 1 and 15, every 6 months" (two doses per 6-month cycle).
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    t = re.sub(r"\s+", " ", str(text).strip().lower())
    if t in _PER_DAY:
        return float(_PER_DAY[t]), 1.0
    for word, num in _WORD_NUMBERS.items():
        t = re.sub(rf"\b{word}\b", str(num), t)
    if t in {"weekly", "once weekly", "once a week", "every week", "qw"}:
        return 1.0, 7.0
    if t in {"every other week", "every second week", "fortnightly", "once a fortnight"}:
        return 1.0, 14.0
    if t in {"every other day", "alternate days", "on alternate days", "every second day"}:
        return 1.0, 2.0
    if t in {"monthly", "every month", "once a month"}:
        return 1.0, DAYS_PER_MONTH
    if t in {"once", "single dose", "one dose", "stat"}:
        return 1.0, np.inf
    m = re.fullmatch(r"(?:once )?every (\d+(?:\.\d+)?) (days?|weeks?|months?|years?)", t)
    if m:
        return 1.0, float(m.group(1)) * _UNIT_DAYS[m.group(2)]
    m = re.fullmatch(r"(\d+) times (?:a|per) (day|week|month)", t)
    if m:
        return float(m.group(1)), _UNIT_DAYS[m.group(2)]
    m = re.fullmatch(r"q(\d+)w", t)
    if m:
        return 1.0, 7.0 * float(m.group(1))
    # course schedules: "days 1 and 15, every 6 months", "day 1 and day 15 every 24 weeks"
    m = re.fullmatch(r"(days? [\d, and&day]+?),? (?:repeat(?:ed)? )?every (\d+(?:\.\d+)?) (days?|weeks?|months?|years?)", t)
    if m:
        n_doses = len(re.findall(r"\d+", m.group(1)))
        return float(n_doses), float(m.group(2)) * _UNIT_DAYS[m.group(3)]
    return None


def parse_intervals(texts: pd.Series) -> pd.DataFrame:
    """Vectorised `parse_interval`: columns `doses_per_cycle`, `cycle_days` (NaN where unreadable)."""
    uniques = {u: parse_interval(u) for u in texts.dropna().unique()}
    parsed = texts.map(lambda v: uniques.get(v) or (np.nan, np.nan))
    return pd.DataFrame(parsed.tolist(), columns=["doses_per_cycle", "cycle_days"], index=texts.index, dtype=float)


def dose_to_mg(dose: pd.Series, dose_unit: pd.Series, weight_kg: pd.Series, bsa_m2: pd.Series) -> pd.Series:
    """Dose per administration in mg: g→mg, mg/kg × weight, mg/m² × BSA (NaN when the unit or body size is missing)."""
    unit = dose_unit.astype("object").map(lambda u: DOSE_UNITS.get(_key(u)) if isinstance(u, str) else None)
    factor = unit.map(lambda u: u[0] if u else np.nan).astype(float)
    basis = unit.map(lambda u: u[1] if u else None)
    scale = np.select(
        [basis == "mg", basis == "mg_per_kg", basis == "mg_per_m2"],
        [1.0, pd.to_numeric(weight_kg, errors="coerce"), pd.to_numeric(bsa_m2, errors="coerce")],
        default=np.nan,
    )
    return pd.Series(pd.to_numeric(dose, errors="coerce").to_numpy(float) * factor.to_numpy() * scale, index=dose.index)


def body_surface_area(weight_kg: pd.Series | np.ndarray, height_cm: pd.Series | np.ndarray) -> np.ndarray:
    """Mosteller body-surface area in m²."""
    return np.sqrt(np.asarray(weight_kg, dtype=float) * np.asarray(height_cm, dtype=float) / 3600.0)


# --- options ---------------------------------------------------------------------------------------------------
class StartDose(_Frozen):
    dose: float
    dose_unit: str
    route: str
    interval: str


class EffectModifier(_Frozen):
    """A patient fact (a feature column) the literature says changes an option's effect, with its source."""

    feature: str
    direction: Literal["raises", "lowers"]
    source: NonBlank  # the publication behind it (docs/sources.md)


class OptionSpec(_Frozen):
    """One escalation option: continue, optimise doses, add a drug, or switch (stop `stops`, start `adds`)."""

    name: str
    label: str
    kind: Literal["continue", "optimise", "add", "switch"]
    adds: str | None = None
    #: a switch stops this current drug (it must be current: the option is ineligible otherwise).
    stops: str | None = None
    eligible_unless_on: tuple[str, ...] = ()
    start_dose: StartDose | None = None
    effect_modifiers: tuple[EffectModifier, ...] = ()

    @model_validator(mode="after")
    def _switch_names_both_drugs(self) -> OptionSpec:
        if self.kind == "switch" and not (self.stops and self.adds):
            raise ValueError(f"option {self.name!r}: a switch names the drug it stops and the one it adds "
                             "(`stops:` and `adds:`)")
        if self.kind != "switch" and self.stops:
            raise ValueError(f"option {self.name!r}: only a switch stops a drug (kind: switch)")
        return self


class CombinationRule(_Frozen):
    """Drugs a product label advises against combining: an option that starts one of `drugs` while one of
    `with_drugs` is current (or, unless `one_way`, the other way round) breaks it. `advised_against` options are
    never the recommendation; `caution` ones are only flagged. A one-way rule tells the two directions apart where
    they differ: rituximab counts as current for a year after its last infusion, so a JAK inhibitor started then
    meets depleted B cells (a caution), while rituximab started on top of a JAK inhibitor taken now is the
    combination the label advises against."""

    name: str
    drugs: tuple[str, ...]
    with_drugs: tuple[str, ...] = Field(alias="with")
    level: Literal["advised_against", "caution"] = "advised_against"
    one_way: bool = False
    text: NonBlank
    source: NonBlank


class OptionCatalog(_Frozen):
    """The configured escalation options, in display order, with their eligibility rules."""

    options: tuple[OptionSpec, ...]
    rituximab_active_days: int = Field(365, ge=0)
    #: a fixed guideline-ordered policy (first eligible option wins); the simulator card's comparison policy.
    guideline: tuple[str, ...] = ()
    #: label combination rules (configs/options.yaml `combination_rules`), checked per option and decision.
    combination_rules: tuple[CombinationRule, ...] = ()

    @model_validator(mode="after")
    def _names_once_guideline_known(self) -> OptionCatalog:
        twice = repeated(self.names)
        if twice:
            raise ValueError(f"option(s) {twice} listed twice (rule: one entry per option name)")
        unknown = [g for g in self.guideline if g not in self.names]
        if unknown:
            raise ValueError(f"guideline names unknown options {', '.join(unknown)}; known: {', '.join(self.names)}")
        return self

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OptionCatalog:
        return cls.model_validate(config)

    def unknown_drugs(self, vocabulary: Vocabulary) -> list[str]:
        """Every drug an option (`adds`, `stops`, `eligible_unless_on`) or combination rule (`drugs`, `with`) names
        that `vocabulary` does not know, as "option 'add_ivig': eligible_unless_on names 'ivgi', ..." (eligibility
        and the rules skip such a name, so a typo would silently make add IVIG eligible for patients on IVIG)."""
        generics = vocabulary.generics

        def unknown(where: str, key: str, names: Iterable[str | None]) -> list[str]:
            out = []
            for name in (n for n in names if n is not None and n not in generics):
                near = difflib.get_close_matches(name, generics, n=1, cutoff=0.6)
                hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(generics)}"
                out.append(f"{where}: {key} names {name!r}, not a generic of the drug vocabulary ({hint})")
            return out

        found: list[str] = []
        for o in self.options:
            where = f"option {o.name!r}"
            found += unknown(where, "adds", [o.adds]) + unknown(where, "stops", [o.stops])
            found += unknown(where, "eligible_unless_on", o.eligible_unless_on)
        for rule in self.combination_rules:
            where = f"combination rule {rule.name!r}"
            found += unknown(where, "drugs", rule.drugs) + unknown(where, "with", rule.with_drugs)
        return found

    def checked_against(self, vocabulary: Vocabulary) -> OptionCatalog:
        """This catalog, once every drug it names is one of `vocabulary`'s generics (else a ValueError naming each
        option, key and name: `unknown_drugs`)."""
        found = self.unknown_drugs(vocabulary)
        if found:
            raise ValueError("; ".join(found))
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def option(self, name: str) -> OptionSpec:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(f"unknown option {name!r}; known: {', '.join(self.names)}")

    @property
    def control(self) -> str:
        return next(o.name for o in self.options if o.kind == "continue")

    def effect_modifiers(self) -> dict[str, tuple[str, ...]]:
        """Option -> its published effect-modifier feature columns (options without any are left out)."""
        return {o.name: tuple(m.feature for m in o.effect_modifiers) for o in self.options if o.effect_modifiers}

    def eligibility(self, on_drug: pd.DataFrame, any_below_target: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Which options each row may take, and why not.

        `on_drug`: one boolean column per generic (missing columns mean "not on it"); `any_below_target`: a current
        drug is below its target dose. Returns (eligible: bool frame, reason: str frame, "" where eligible).
        """
        eligible = pd.DataFrame(index=on_drug.index)
        reason = pd.DataFrame(index=on_drug.index)
        for opt in self.options:
            if opt.kind == "continue":
                ok = pd.Series(True, index=on_drug.index)
                why = pd.Series("", index=on_drug.index)
            elif opt.kind == "optimise":
                ok = any_below_target.fillna(False).astype(bool)
                on_any = on_drug.fillna(False).astype(bool).any(axis=1).to_numpy() if on_drug.shape[1] else \
                    np.zeros(len(on_drug), dtype=bool)
                why = pd.Series(np.where(ok, "", np.where(on_any, "every current drug is at or above its target dose",
                                                          "no current drug to bring to its target dose")),
                                index=on_drug.index)
            else:
                blocking = [g for g in opt.eligible_unless_on if g in on_drug.columns]
                on = on_drug[blocking].fillna(False).astype(bool).to_numpy() if blocking else np.zeros((len(on_drug), 0), bool)
                ok = pd.Series(~on.any(axis=1), index=on_drug.index)
                # "already on a, b": join the names column by column (vectorised, no per-row apply)
                names = np.full(len(on_drug), "", dtype=object)
                for j, g in enumerate(blocking):
                    sep = np.where(names == "", "", ", ")
                    names = np.where(on[:, j], names + sep + g, names)
                why = np.where(ok, "", "already on " + names.astype(str))
                if opt.kind == "switch":  # the drug it stops must be current
                    current = (on_drug[opt.stops].fillna(False).astype(bool).to_numpy() if opt.stops in on_drug.columns
                               else np.zeros(len(on_drug), bool))
                    why = np.where(current, why, f"not on {opt.stops}")
                    ok = ok & current
                why = pd.Series(why, index=on_drug.index)
            eligible[opt.name] = ok.to_numpy()
            reason[opt.name] = why.to_numpy()
        return eligible, reason

    def current_combinations(self, generics: Iterable[str], labels: Mapping[str, str] | None = None
                             ) -> tuple[tuple[str, str], ...]:
        """The two-way `advised_against` rules the current drugs already break together, as ("tofacitinib with
        abatacept", the rule's text) (`labels` names the drugs): continuing keeps such a combination, so a page says
        so even though no option starts it. A one-way rule is about starting its `drugs` side after its partner
        (rituximab after a JAK inhibitor, not a JAK inhibitor after rituximab): which came first is not known here,
        so it is left out."""
        on = set(generics)
        name = (lambda g: labels.get(g, g)) if labels else (lambda g: g)
        out: list[tuple[str, str]] = []
        said: set[frozenset[str]] = set()  # a pair two rules cover is said once, by the first
        for rule in (r for r in self.combination_rules if r.level == "advised_against" and not r.one_way):
            for drug in (g for g in rule.drugs if g in on):
                partners = [g for g in rule.with_drugs if g in on and g != drug and frozenset((drug, g)) not in said]
                if partners:
                    said.update(frozenset((drug, g)) for g in partners)
                    out.append((f"{name(drug)} with {' and '.join(name(g) for g in partners)}", rule.text))
        return tuple(out)

    def combination_flags(self, on_drug: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(blocked, rule text) per row and option: the rules an option's new drug breaks with the drugs that stay
        current (a switch's stopped drug does not). `blocked` is True where an `advised_against` rule is broken;
        the text names every broken rule ("" where none). Continuing or optimising starts nothing, so breaks none."""
        current = {g: on_drug[g].fillna(False).astype(bool).to_numpy() for g in on_drug.columns}
        none = np.zeros(len(on_drug), dtype=bool)
        blocked = pd.DataFrame(index=on_drug.index)
        text = pd.DataFrame(index=on_drug.index)
        for opt in self.options:
            hit = none.copy()
            words = np.full(len(on_drug), "", dtype=object)
            if opt.adds is not None:
                for rule in self.combination_rules:
                    if opt.adds in rule.drugs:
                        partners = rule.with_drugs
                    elif opt.adds in rule.with_drugs and not getattr(rule, "one_way", False):  # older pickles
                        partners = rule.drugs
                    else:
                        continue
                    stays = [current.get(g, none) & (g != opt.stops) for g in partners if g != opt.adds]
                    breaks = np.logical_or.reduce(stays) if stays else none
                    if rule.level == "advised_against":
                        hit |= breaks
                    sep = np.where(words == "", "", "; ")
                    words = np.where(breaks, words + sep + rule.text, words)
            blocked[opt.name] = hit
            text[opt.name] = words
        return blocked, text


def immunosuppressants(vocabulary: Vocabulary) -> tuple[str, ...]:
    """Generics that count towards the number of immunosuppressants taken at once."""
    return tuple(d.generic for d in vocabulary.drugs if d.immunosuppressant)
