"""Point-in-time features for (patient, as-of date) pairs, the feature dictionary and the current-regimen table.

One function, `build_features`, serves training (one row per derived decision point) and scoring (one row per
patient "as of today"). Everything is computed from rows dated strictly before `as_of`; regimen rows count only
if started before the cut-off `as_of − regimen_lag_days`, and their end dates are read as of that cut-off (a row
ending on or after it is "ongoing"). All look-ups are vectorised: tables are sorted once by (patient, day) and
queried with `searchsorted` range joins, so the cost is linear in rows + decisions, with no loop per patient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from features.config import FeatureConfig
from features.vocabulary import (
    DAYS_PER_MONTH,
    DOSE_UNITS,
    OptionCatalog,
    Vocabulary,
    body_surface_area,
    dose_status,
)

# ---------------------------------------------------------------------------------------------------------------
# point-in-time primitives

_STRIDE = np.int64(1 << 23)  # composite key = patient code × stride + day + offset
_OFFSET = np.int64(1 << 22)
FAR_FUTURE = int((1 << 22) - 2)  # the day of an open end date ("ongoing")
RITUXIMAB = "rituximab"
#: the infusions of one rituximab course (two, two weeks apart; the second up to a month late) fall within this many
#: days of its start; courses are months apart
RITUXIMAB_COURSE_DAYS = 42
#: a course begun fewer days than this before the cut-off is still being given: its second infusion is due on day
#: 15 (a week's grace); after that, a course with one infusion of two is half a course
RITUXIMAB_SECOND_INFUSION_DAYS = 21

#: disease-activity measures with a latest / change / worst feature: (measure, label, unit, higher is worse).
DISEASE_MEASURES: tuple[tuple[str, str, str, bool], ...] = (
    ("physician_global", "physician global activity", "cm (0-10)", True),
    ("patient_global", "patient global activity", "cm (0-10)", True),
    ("mmt8", "MMT-8 muscle strength", "% of scale maximum", False),
    ("haq", "HAQ disability index", "score (0-3)", True),
    ("extramuscular_global", "extramuscular global activity", "cm (0-10)", True),
    ("cdasi_activity", "CDASI activity", "score (0-100)", True),
    ("cdasi_damage", "CDASI damage", "score (0-32)", True),
)
ENZYMES: tuple[str, ...] = ("ck", "aldolase", "ast", "alt", "ldh")
#: safety laboratory values reported as their latest value: (measure, label, unit).
SAFETY_LABS: tuple[tuple[str, str, str], ...] = (
    ("neutrophils", "neutrophils", "10^9/L"),
    ("lymphocytes", "lymphocytes", "10^9/L"),
    ("platelets", "platelets", "10^9/L"),
    ("haemoglobin", "haemoglobin", "g/dL"),
    ("alt", "ALT", "U/L"),
    ("creatinine", "creatinine", "umol/L"),
)
DIAGNOSES: tuple[str, ...] = (
    "adult_dermatomyositis",
    "juvenile_dermatomyositis",
    "amyopathic_dermatomyositis",
    "polymyositis",
    "antisynthetase_syndrome",
    "immune_mediated_necrotising_myopathy",
)
#: (flag, label, description); a negative result is worded as the state clinicians name ("seronegative = no"
#: reads plainly, "antibody negative = no" is a double negative)
ANTIBODY_FLAGS: tuple[tuple[str, str, str], ...] = (
    *((flag, label, f"{label} antibody positive") for flag, label in (
        ("anti_mda5", "anti-MDA5"),
        ("anti_tif1g", "anti-TIF1γ"),
        ("anti_nxp2", "anti-NXP2"),
        ("anti_mi2", "anti-Mi-2"),
        ("anti_sae", "anti-SAE"),
        ("anti_synthetase", "anti-synthetase (Jo-1, PL-7, PL-12, EJ, OJ)"),
        ("anti_srp_hmgcr", "anti-SRP / anti-HMGCR"),
    )),
    ("antibody_negative", "seronegative", "tested, and no myositis-specific or -associated antibody found"),
)
KEY_COLUMNS: tuple[str, ...] = ("patient_id", "decision_id", "as_of")
DICTIONARY_COLUMNS: tuple[str, ...] = (
    "feature", "family", "clinical_feature", "label", "unit", "description", "dtype",
)


def window_months(window_days: float) -> int:
    """A look-back window in the whole months that feature names and labels give it (91 days → 3)."""
    return round(window_days / DAYS_PER_MONTH)


def change_feature(measure: str, window_days: float) -> str:
    """The name of a disease measure's change over a window ('cdasi_activity_change_3m'): the one spelling the
    features write and the page reads (it words a change with nothing recorded in its window by this name)."""
    return f"{measure}_change_{window_months(window_days)}m"


def days_since_feature(measure: str) -> str:
    """The name of the age in days of a disease measure's latest value ('cdasi_activity_days_since')."""
    return f"{measure}_days_since"


def to_days(values: pd.Series | np.ndarray) -> np.ndarray:
    """Calendar dates → int64 days since 1970-01-01; a missing date (an open end) becomes FAR_FUTURE."""
    arr = np.asarray(pd.to_datetime(pd.Series(values)).to_numpy()).astype("datetime64[D]")
    out = arr.astype(np.int64)
    return np.where(np.isnat(arr), FAR_FUTURE, out)


def from_days(days: np.ndarray) -> np.ndarray:
    """int64 days → datetime64[ns] (FAR_FUTURE → NaT)."""
    d = np.asarray(days, dtype=np.int64)
    out = d.astype("datetime64[D]").astype("datetime64[ns]")
    return np.where(d >= FAR_FUTURE, np.datetime64("NaT"), out)


def patient_codes(index: pd.Index, ids: pd.Series | np.ndarray) -> np.ndarray:
    """Integer code of each id in `index` (-1 for ids not in it: they are never matched).

    Each distinct id is looked up once (factorise, then map the uniques), so millions of rows cost one hash pass.
    """
    codes, uniques = pd.factorize(pd.Series(ids), use_na_sentinel=True)
    lookup = index.get_indexer(pd.Index(np.asarray(uniques, dtype=object)).astype(str)).astype(np.int64)
    return np.where(codes >= 0, lookup[np.maximum(codes, 0)] if len(lookup) else -1, -1)


def composite(codes: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Sortable (patient, day) key."""
    return codes.astype(np.int64) * _STRIDE + np.asarray(days, dtype=np.int64) + _OFFSET


def decompose(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Composite keys back to (patient code, day)."""
    return keys // _STRIDE, keys % _STRIDE - _OFFSET


def pairs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand ranges [lo, hi) into (query index, position) pairs, grouped by query in order (a range join)."""
    n = np.maximum(hi - lo, 0)
    query = np.repeat(np.arange(len(lo)), n)
    starts = np.cumsum(n) - n
    pos = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(starts, n) + np.repeat(lo, n)
    return query, pos


class Track:
    """One measure's values sorted by (patient, day), one value per day (same-day duplicates averaged)."""

    def __init__(self, codes: np.ndarray, days: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        key = composite(codes, days)
        order = np.argsort(key, kind="stable")
        k = key[order]
        first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, dtype=np.int64)
        self.key = k[first]
        self.days = np.asarray(days, dtype=np.int64)[order][first]
        self.columns = {name: _group_mean(np.asarray(v, dtype=float)[order], first) for name, v in columns.items()}

    def __len__(self) -> int:
        return len(self.key)

    def bounds(self, codes: np.ndarray, day_from: np.ndarray | int, day_to: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Positions [lo, hi) of each query patient's values dated in [day_from, day_to)."""
        lo = np.searchsorted(self.key, composite(codes, np.maximum(day_from, -_OFFSET)), side="left")
        hi = np.searchsorted(self.key, composite(codes, day_to), side="left")
        return lo, np.maximum(hi, lo)

    def latest(self, codes: np.ndarray, before: np.ndarray, since: np.ndarray | int | None = None):
        """Position of each query patient's latest value dated before `before` (and on/after `since`), -1 if none."""
        lo, hi = self.bounds(codes, -_OFFSET if since is None else since, before)
        return np.where(hi > lo, hi - 1, -1)

    def take(self, column: str, pos: np.ndarray) -> np.ndarray:
        """Values at positions (NaN where pos is -1)."""
        v = self.columns[column]
        if not len(v):
            return np.full(len(pos), np.nan)
        return np.where(pos >= 0, v[np.maximum(pos, 0)], np.nan)

    def take_days(self, pos: np.ndarray) -> np.ndarray:
        if not len(self.days):
            return np.full(len(pos), np.nan)
        return np.where(pos >= 0, self.days[np.maximum(pos, 0)], np.nan)

    def window_reduce(self, codes, day_from, day_to, values: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
        """`ufunc.reduce` of `values` (aligned with the track) over each query's window; NaN for an empty one."""
        lo, hi = self.bounds(codes, day_from, day_to)
        out = np.full(len(codes), np.nan)
        q, pos = pairs(lo, hi)
        if not len(q):
            return out
        starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
        out[q[starts]] = ufunc.reduceat(values[pos], starts)
        return out


def _group_mean(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Mean of each block of sorted values starting at `first`, ignoring NaN (NaN when all are)."""
    if not len(values):
        return values
    ok = ~np.isnan(values)
    total = np.add.reduceat(np.where(ok, values, 0.0), first)
    count = np.add.reduceat(ok.astype(np.int64), first)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def measure_tracks(assessments: pd.DataFrame, index: pd.Index, measures: tuple[str, ...] | None = None) -> dict[str, Track]:
    """One Track per measure (value, upper limit of normal, scale maximum) for patients in `index`."""
    codes = patient_codes(index, assessments["patient_id"])
    days = to_days(assessments["date"])
    mcode, names = pd.factorize(assessments["measure"])
    names = [str(m) for m in names]
    value = pd.to_numeric(assessments["value"], errors="coerce").to_numpy(float)
    uln = pd.to_numeric(assessments.get("upper_limit_normal", pd.Series(np.nan, index=assessments.index)), errors="coerce").to_numpy(float)
    scale = pd.to_numeric(assessments.get("scale_max", pd.Series(np.nan, index=assessments.index)), errors="coerce").to_numpy(float)
    tracks: dict[str, Track] = {}
    wanted = set(measures) if measures is not None else set(names)
    # group rows by measure once (a stable integer sort) rather than one boolean scan per measure
    is_wanted = np.asarray([m in wanted for m in names] + [False], dtype=bool)  # index -1 (missing) → False
    keep = (codes >= 0) & is_wanted[mcode]
    rows = np.flatnonzero(keep)
    # measure codes are small integers: a 16-bit stable sort is a linear-time radix sort
    order = rows[np.argsort(mcode[rows].astype(np.int16), kind="stable")]
    sorted_m = mcode[order]
    first = np.flatnonzero(np.r_[True, sorted_m[1:] != sorted_m[:-1]]) if len(sorted_m) else np.zeros(0, np.int64)
    uniq = sorted_m[first]
    bounds = np.r_[first, len(sorted_m)]
    for i, m in enumerate(uniq):
        sel = order[bounds[i]:bounds[i + 1]]
        tracks[names[m]] = Track(codes[sel], days[sel], {"value": value[sel], "uln": uln[sel], "scale": scale[sel]})
    for m in wanted - set(tracks):
        empty = np.zeros(0)
        tracks[m] = Track(np.zeros(0, np.int64), np.zeros(0, np.int64), {"value": empty, "uln": empty, "scale": empty})
    return tracks


# ---------------------------------------------------------------------------------------------------------------
# regimens as of a cut-off


class RegimenIndex:
    """Normalised regimen rows sorted by (patient, start) with derived run starts and stability-change flags.

    `ignore_classes` mark rows that make no option (steroid tapers); `stability_ignore_classes` rows whose changes
    do not break a stable regimen.
    """

    def __init__(
        self,
        regimens: pd.DataFrame,
        index: pd.Index,
        vocabulary: Vocabulary,
        catalog: OptionCatalog,
        continuity_gap_days: int,
        ignore_classes: tuple[str, ...] = (),
        stability_ignore_classes: tuple[str, ...] = (),
    ) -> None:
        reg = regimens.reset_index(drop=True)
        codes = patient_codes(index, reg["patient_id"])
        start = to_days(reg["start_date"])
        end = to_days(reg["end_date"])
        generic = reg["generic"].astype(object).to_numpy()
        # a deterministic order that never depends on an end date: rows of one drug started the same day are
        # ordered by what is known when they start (dose, route), so a later end never reorders them; rows alike
        # in all of that keep their input order
        gen_code = pd.Index(sorted(pd.unique(generic[pd.notna(generic)]))).get_indexer(generic)
        daily = pd.to_numeric(reg["daily_mg"], errors="coerce").to_numpy(float)
        dose_mg = pd.to_numeric(reg["dose_mg"], errors="coerce").to_numpy(float)
        route = reg["route"].astype(str).to_numpy()
        route_code = pd.Index(sorted(pd.unique(route))).get_indexer(route)
        order = np.lexsort((route_code, np.nan_to_num(dose_mg, nan=-1.0), np.nan_to_num(daily, nan=-1.0), gen_code,
                            start, codes))
        order = order[codes[order] >= 0]
        self.frame = reg.iloc[order].reset_index(drop=True)
        self.codes = codes[order]
        self.start = start[order]
        self.end = end[order]
        self.generic = generic[order]
        self.daily_mg = daily[order]
        self.drug_class = self.frame["drug_class"].astype(object).to_numpy()
        self.key = composite(self.codes, self.start)
        self.rituximab_active_days = int(catalog.rituximab_active_days)
        immuno = {d.generic for d in vocabulary.drugs if d.immunosuppressant}
        self.immunosuppressant = np.isin(self.generic, list(immuno))
        self.ignored = np.isin(self.drug_class, list(ignore_classes))
        self.stability_ignored = np.isin(self.drug_class, list(stability_ignore_classes))
        units = self.frame["dose_unit"].astype(object)
        known = {u: DOSE_UNITS.get(str(u).strip().lower()) for u in pd.unique(units.dropna())}
        self.unit_factor = units.map({u: v[0] for u, v in known.items() if v}).to_numpy(float, na_value=np.nan)
        self.unit_basis = units.map({u: v[1] for u, v in known.items() if v}).fillna("").to_numpy(object)
        self.dose = pd.to_numeric(self.frame["dose"], errors="coerce").to_numpy(float)
        self.dose_mg = pd.to_numeric(self.frame["dose_mg"], errors="coerce").to_numpy(float)
        rituximab = vocabulary.drug(RITUXIMAB) if RITUXIMAB in vocabulary.generics else None
        #: a course's length when its rows give none (one row per infusion written "once"): the target's cycle
        self.rituximab_cycle_days = rituximab.target.cycle_days if rituximab and rituximab.target.has_target else np.nan
        #: infusions of the target's course (2): a course still being given at the cut-off counts at least these
        self.rituximab_course_doses = (rituximab.target.doses_per_cycle if rituximab and rituximab.target.has_target
                                       else np.nan)
        self.doses_per_cycle = pd.to_numeric(self.frame["doses_per_cycle"], errors="coerce").to_numpy(float)
        cycle = pd.to_numeric(self.frame["cycle_days"], errors="coerce").to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.per_day = self.doses_per_cycle / cycle
        self.is_rituximab = self.generic == RITUXIMAB
        self.cycle_days = np.where(np.isfinite(cycle) & (cycle > 0), cycle, np.nan)
        self._derive_runs(gen_code[order], continuity_gap_days)

    def _derive_runs(self, gen_code: np.ndarray, gap: int) -> None:
        """Start of each row's continuous exposure to its drug, and whether a rituximab row is a re-dose.

        Only earlier-starting rows of the same drug decide, so later rows never change an earlier row's run.
        """
        n = len(self.start)
        self.run_start = np.zeros(n, np.int64)
        self.redose = np.zeros(n, bool)
        if n == 0:
            return
        # rows are sorted by (patient, start, drug, ...): re-sort by (patient, drug, start) for the runs
        o = np.lexsort((self.end, self.start, gen_code, self.codes))
        group = self.codes[o] * np.int64(10_000) + gen_code[o]
        start, end, ritux, daily = self.start[o], self.end[o], self.is_rituximab[o], self.daily_mg[o]
        new_group = np.r_[True, group[1:] != group[:-1]]
        # for rituximab the "end" of exposure is the end of its active period after the last infusion
        last_exposure = np.where(ritux, np.minimum(end, FAR_FUTURE - self.rituximab_active_days)
                                 + self.rituximab_active_days, end)
        tol = np.where(ritux, 0, gap)
        gid = np.cumsum(new_group)
        prev_max = pd.Series(last_exposure).groupby(gid).cummax().groupby(gid).shift(1).to_numpy(float)
        new_run = new_group | (start > np.nan_to_num(prev_max, nan=-np.inf) + tol)
        run_id = np.cumsum(new_run)
        self.run_start[o] = pd.Series(start).groupby(run_id).transform("min").to_numpy()
        # a new rituximab course at the same dose while the last one is active is a re-dose, not a change
        prev_daily = pd.Series(daily).groupby(gid).shift(1).to_numpy(float)
        same_dose = np.isclose(daily, prev_daily, rtol=1e-6) | (np.isnan(daily) & np.isnan(prev_daily))
        self.redose[o] = ritux & ~new_run & same_dose

    def started_before(self, codes: np.ndarray, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query, row) pairs of every row started before each query's cut-off day."""
        lo = np.searchsorted(self.key, composite(codes, np.full(len(codes), -_OFFSET)), side="left")
        hi = np.searchsorted(self.key, composite(codes, cut), side="left")
        return pairs(lo, np.maximum(hi, lo))

    def started_between(self, codes: np.ndarray, day_from: np.ndarray, day_to: np.ndarray):
        """(query, row) pairs of rows started in [day_from, day_to)."""
        lo = np.searchsorted(self.key, composite(codes, day_from), side="left")
        hi = np.searchsorted(self.key, composite(codes, day_to), side="left")
        return pairs(lo, np.maximum(hi, lo))

    def state(self, codes: np.ndarray, cut: np.ndarray) -> pd.DataFrame:
        """Every row started before each query's cut-off, with its end read as of the cut-off.

        Columns: query, row (position), generic, cut_day, ongoing (end on/after cut), current (ongoing, or
        rituximab given within the active period), last_dose_day (an ongoing row: start of the latest course before
        the cut-off; else its end), course_start_day (start of the latest course begun before the cut-off, ended
        rows too, for cycles longer than `RITUXIMAB_COURSE_DAYS`) and course_record (given / scheduled / stopped).
        """
        q, r = self.started_before(codes, cut)
        c = cut[q]
        end = self.end[r]
        ongoing = end >= c
        start = self.start[r]
        cycle = self.cycle_days[r]
        # the latest course start before the cut-off (and before the row's end) of a repeating row; the last dose is
        # that for an ongoing row, else the end (last infusion)
        with np.errstate(invalid="ignore"):
            k = np.floor((np.minimum(end, c - 1) - start) / cycle)
        course = np.where(np.isnan(k), start, start + np.nan_to_num(k, nan=0.0) * np.nan_to_num(cycle, nan=0.0))
        last_dose = np.where(ongoing, course, end).astype(np.int64)
        # courses months apart (rituximab's): the latest one begun before the cut-off; a row repeating more often
        # (infusions of one course) is one course from its start. A 6-month cycle is 182.625 days: rounded.
        by_schedule = np.nan_to_num(k, nan=0.0) * (np.nan_to_num(cycle, nan=0.0) > RITUXIMAB_COURSE_DAYS)
        course_start = np.round(start + by_schedule * np.nan_to_num(cycle, nan=0.0)).astype(np.int64)
        ritux = self.is_rituximab[r]
        current = np.where(ritux, (c - last_dose) <= self.rituximab_active_days, ongoing)
        return pd.DataFrame(
            {
                "query": q,
                "row": r,
                "generic": self.generic[r],
                "cut_day": c,
                "start": start,
                "end_as_of": np.where(ongoing, FAR_FUTURE, end),
                "ongoing": ongoing,
                "current": current,
                "last_dose_day": last_dose,
                "course_start_day": course_start,
                # the course as the record has it: a row's start, a date of an ongoing order's repeat schedule, or
                # the last course of an order that ended well after it began (stopped: none further prescribed)
                "course_record": np.select(
                    [ongoing & (by_schedule > 0), ~ongoing & (end - course_start > RITUXIMAB_COURSE_DAYS)],
                    ["scheduled", "stopped"], "given"),
                "rituximab": ritux,
                "ignored": self.ignored[r],
                "stability_ignored": self.stability_ignored[r],
                "redose": self.redose[r],
            }
        )


def current_drugs(reg: RegimenIndex, state: pd.DataFrame, weight: np.ndarray | None = None,
                  bsa: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (query, generic) currently taken: summed intensity (mg/day), run start, latest row position;
    for rituximab the day its latest course began (`course_start_day`, NaN for other drugs) and how the record has
    that course (`course_record`: given / scheduled / stopped, `RegimenIndex.state`).

    Weight- and BSA-based doses are re-resolved with each query's `weight` / `bsa` (measured before as_of) when
    given, else the normalised `daily_mg` is used. Rituximab after its course has ended still counts (while
    active) at the intensity of its latest course only (`rituximab_course_intensity`).
    """
    cur = state[state["current"].to_numpy() & pd.notna(state["generic"]).to_numpy()]
    # an export may write each infusion as a row (day 1, day 15): a rituximab course begins at its first infusion
    rx = cur[cur["rituximab"].to_numpy()].sort_values(["query", "course_start_day"], kind="stable")
    latest = rx.groupby("query")["course_start_day"].transform("max")
    course = rx[rx["course_start_day"] >= latest - RITUXIMAB_COURSE_DAYS]  # the latest course's rows
    course_start = course.groupby("query")["course_start_day"].min()
    course_record = rx.groupby("query")["course_record"].last()  # the row of the latest course
    later_course = cur["rituximab"].to_numpy() & cur.duplicated(["query", "generic"], keep="last").to_numpy()
    in_progress = course.groupby("query")["cut_day"].first() - course_start < RITUXIMAB_SECOND_INFUSION_DAYS
    course_mg_day = rituximab_course_intensity(reg, course, dose_mg_of(reg, course, weight, bsa), in_progress)
    cur = cur[~later_course]
    r = cur["row"].to_numpy()
    q = cur["query"].to_numpy()
    daily = reg.daily_mg[r] if weight is None or bsa is None else dose_mg_of(reg, cur, weight, bsa) * reg.per_day[r]
    daily = np.where(reg.is_rituximab[r], course_mg_day.reindex(q).to_numpy(float), daily)
    cur = pd.DataFrame({"query": q, "generic": cur["generic"].to_numpy(), "row": r,
                        "daily_mg": daily, "run_start": reg.run_start[r], "ignored": reg.ignored[r]})
    agg = (
        cur.groupby(["query", "generic"], sort=True)
        .agg(daily_mg=("daily_mg", "sum"), n_dosed=("daily_mg", "count"), run_start=("run_start", "min"),
             row=("row", "max"), ignored=("ignored", "all"))
        .reset_index()
    )
    agg.loc[agg["n_dosed"].to_numpy() == 0, "daily_mg"] = np.nan
    is_rx = agg["generic"].to_numpy() == RITUXIMAB
    agg["course_start_day"] = np.where(is_rx, course_start.reindex(agg["query"]).to_numpy(float), np.nan)
    agg["course_record"] = np.where(is_rx, course_record.reindex(agg["query"]).to_numpy(object), None)
    return agg.drop(columns="n_dosed")


def dose_mg_of(reg: RegimenIndex, rows: pd.DataFrame, weight: np.ndarray | None, bsa: np.ndarray | None) -> np.ndarray:
    """mg per administration of each (query, row), re-resolved with its query's weight / BSA when given."""
    r = rows["row"].to_numpy()
    if weight is None or bsa is None:
        return reg.dose_mg[r]
    q = rows["query"].to_numpy()
    basis = reg.unit_basis[r]
    scale = np.select([basis == "mg", basis == "mg_per_kg", basis == "mg_per_m2"], [1.0, weight[q], bsa[q]],
                      default=np.nan)
    return reg.dose[r] * reg.unit_factor[r] * scale


def rituximab_course_intensity(reg: RegimenIndex, course: pd.DataFrame, dose_mg: np.ndarray,
                               in_progress: pd.Series | None = None) -> pd.Series:
    """Intensity (mg/day) of each query's latest rituximab course, whatever rows the record splits it into.

    The latest-started row of the course states it where it prescribes a whole course ("days 1 and 15, every 6
    months"; an earlier row of the window is then the order it replaced). Otherwise the course's dose is every
    infusion of its rows at the latest row's dose (a row at another dose is the order it replaced): a row written
    "once" or with the courses' interval ("every 6 months") one, a row repeating within the course ("every 2 weeks")
    its infusions up to its last dose. The dose is spread over the interval between courses the rows prescribe, else
    the target's 6 months, so a row per infusion reads like the course row. `course`: query, row, start and
    last_dose_day (`RegimenIndex.state`) of the course's rows. A course `in_progress` (per query: its second infusion
    not yet due at the cut-off) counts at least the target course's infusions, so it is judged by its dose per
    infusion, not read as half a course.
    """
    q = course["query"].to_numpy()
    r = course["row"].to_numpy()
    cycle = reg.cycle_days[r]
    doses_per_cycle = reg.doses_per_cycle[r]
    is_course_cycle = cycle > RITUXIMAB_COURSE_DAYS
    whole_course = is_course_cycle & (doses_per_cycle >= 2)
    latest_row = pd.Series(r).groupby(q).max()
    is_latest = r == latest_row.reindex(q).to_numpy()
    latest_whole = pd.Series(whole_course[is_latest], index=q[is_latest])
    latest_dose = pd.Series(dose_mg[is_latest], index=q[is_latest]).reindex(q).to_numpy(float)
    keep = is_latest | (~latest_whole.reindex(q).to_numpy(bool) & np.isclose(dose_mg, latest_dose, rtol=1e-6))
    start = course["start"].to_numpy(float)
    within = np.minimum(course["last_dose_day"].to_numpy(float), start + RITUXIMAB_COURSE_DAYS) - start
    with np.errstate(invalid="ignore"):
        repeats = np.where(np.isfinite(cycle), 1 + np.floor(np.maximum(within, 0) / cycle), 1.0)
    # an unreadable schedule (no doses per cycle) leaves the infusions, and so the course's dose, unknown
    infusions = np.where(is_course_cycle, doses_per_cycle, np.where(np.isnan(doses_per_cycle), np.nan, repeats))
    latest_cycle = pd.Series(cycle[is_latest], index=q[is_latest])
    interval = latest_cycle.where(latest_cycle > RITUXIMAB_COURSE_DAYS, reg.rituximab_cycle_days)
    # per row as dose × (doses / days), the order the other drugs' intensity is computed in
    mg_day = pd.Series(dose_mg * (infusions / interval.reindex(q).to_numpy(float)), index=q)[keep]
    unknown = mg_day.isna().groupby(level=0).any()
    total = mg_day.groupby(level=0).sum().where(~unknown)
    if in_progress is not None and np.isfinite(reg.rituximab_course_doses):
        # kept rows share the latest dose, so the course's dose scales with its infusions
        given = pd.Series(infusions, index=q)[keep].groupby(level=0).sum().reindex(total.index)
        rows_per_infusion = ~latest_whole.reindex(total.index, fill_value=False).astype(bool)
        short = in_progress.reindex(total.index, fill_value=False) & rows_per_infusion & (
            given < reg.rituximab_course_doses)
        total[short] *= reg.rituximab_course_doses / given[short]
    return total


def last_change_day(state: pd.DataFrame, cut: np.ndarray, n: int) -> np.ndarray:
    """Day of the latest regimen change (a start, or the day after an end) before each cut-off (NaN when none),
    ignoring stability-ignored classes, rituximab re-doses (a new course while the last one is active) and the
    end of a rituximab course (its second infusion completes the course; the drug stays active for months)."""
    s = state[~state["stability_ignored"].to_numpy()]
    starts = np.where(s["redose"].to_numpy(), -np.inf, s["start"].to_numpy(float))
    ends = np.where(s["ongoing"].to_numpy() | s["rituximab"].to_numpy(), -np.inf, s["end_as_of"].to_numpy(float) + 1)
    change = np.maximum(starts, ends)
    out = np.full(n, -np.inf)
    np.maximum.at(out, s["query"].to_numpy(), change)
    out[np.isinf(out)] = np.nan
    return out


# ---------------------------------------------------------------------------------------------------------------
# the feature builder


class FeatureSet(NamedTuple):
    """Features (keys + numeric columns), their dictionary, and the current drugs with doses versus targets."""

    features: pd.DataFrame
    dictionary: pd.DataFrame
    current_regimen: pd.DataFrame

    @property
    def matrix(self) -> pd.DataFrame:
        """The numeric columns only (what a model sees)."""
        return self.features.drop(columns=list(KEY_COLUMNS))


class _Builder:
    """Collects feature columns and their dictionary entries in order."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.columns: dict[str, np.ndarray] = {}
        self.entries: list[dict[str, str]] = []

    def add(self, feature: str, values, family: str, clinical: str, label: str, unit: str, description: str) -> None:
        arr = np.asarray(values, dtype=float)
        if arr.shape != (self.n,):
            raise ValueError(f"feature {feature!r} has shape {arr.shape}, expected ({self.n},)")
        if feature in self.columns:
            raise ValueError(f"feature {feature!r} defined twice")
        self.columns[feature] = arr
        self.entries.append(
            {"feature": feature, "family": family, "clinical_feature": clinical, "label": label, "unit": unit,
             "description": description, "dtype": "float64"}
        )


def _keys_frame(keys: pd.DataFrame) -> pd.DataFrame:
    missing = {"patient_id", "as_of"} - set(keys.columns)
    if missing:
        raise ValueError(f"keys: missing column(s) {sorted(missing)}; need patient_id and as_of [rule: required_column]")
    out = pd.DataFrame(
        {
            "patient_id": keys["patient_id"].astype(str).to_numpy(),
            "as_of": pd.to_datetime(keys["as_of"]).to_numpy().astype("datetime64[ns]"),
        }
    )
    bad = np.isnat(out["as_of"].to_numpy())
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"keys row {row} column 'as_of': missing date [rule: required_value]")
    if "decision_id" in keys.columns:
        out["decision_id"] = keys["decision_id"].astype(str).to_numpy()
    else:
        out["decision_id"] = out["patient_id"] + "@" + pd.Series(out["as_of"]).dt.strftime("%Y-%m-%d").to_numpy()
    return out[list(KEY_COLUMNS)]


#: the rule broken by a patient whose record holds no assessment before the as-of date.
NO_RECORD_RULE = "no_record_before_as_of"


def without_record_before(patients: pd.DataFrame, assessments: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Violations (`features.contract.VIOLATION_COLUMNS`, errors) of the normalised patients with no assessment
    dated before `as_of`: every feature would be imputed, so a prediction would describe an average patient, not
    this one (a diagnosis recorded later, or an as-of date before the export's first visit)."""
    seen = assessments.loc[assessments["date"] < as_of, "patient_id"].dropna().astype(str).unique()
    lacking = patients[~patients["patient_id"].astype(str).isin(seen)]
    return pd.DataFrame({
        "table": "patients", "row": lacking["row"].to_numpy(), "patient_id": lacking["patient_id"].to_numpy(),
        "column": "patient_id", "rule": NO_RECORD_RULE, "severity": "error",
        "message": f"no assessment dated before the as-of date {as_of.date()}: nothing of this patient to predict "
                   "from (an as-of date before the first visit?)"})


def build_features(
    keys: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    vocabulary: Vocabulary,
    catalog: OptionCatalog,
    config: FeatureConfig | None = None,
) -> FeatureSet:
    """Point-in-time features for each (patient_id, as_of) row of `keys` from the normalised contract tables.

    Only data dated before `as_of` is used (regimens: started before as_of − lag); the same call serves
    training decision rows and "as of today" scoring, so both share one feature dictionary.
    """
    config = config or FeatureConfig()
    k = _keys_frame(keys)
    n = len(k)
    index = pd.Index(pd.unique(k["patient_id"]))
    codes = patient_codes(index, k["patient_id"])
    as_of = to_days(k["as_of"])
    cut = as_of - config.regimen_lag_days
    b = _Builder(n)
    tracks = measure_tracks(
        tables["assessments"], index,
        tuple(m for m, *_ in DISEASE_MEASURES) + ENZYMES + tuple(m for m, *_ in SAFETY_LABS) + ("weight", "height"),
    )
    weight_pos = tracks["weight"].latest(codes, as_of)
    weight = tracks["weight"].take("value", weight_pos)
    height = tracks["height"].take("value", tracks["height"].latest(codes, as_of))
    bsa = body_surface_area(weight, height)

    juvenile = juvenile_decisions(k, as_of, tables["patients"], vocabulary)
    current = _regimen_features(b, k, codes, cut, weight, bsa, juvenile, tables["regimens"], index, vocabulary,
                                catalog, config)
    _disease_features(b, codes, as_of, tracks, config)
    _patient_features(b, k, as_of, tables["patients"])
    _safety_features(b, codes, as_of, tracks, tables["events"], index, config)
    b.add("weight_kg", weight, "patient", "body weight", "body weight", "kg",
          "latest weight before the decision (used for weight-based dose targets)")
    b.add("weight_observed", ~np.isnan(weight), "patient", "body weight", "weight recorded", "0/1",
          "a weight was recorded before the decision (dose targets by weight need it)")

    features = pd.concat([k.reset_index(drop=True), pd.DataFrame(b.columns)], axis=1)
    dictionary = pd.DataFrame(b.entries, columns=list(DICTIONARY_COLUMNS))
    return FeatureSet(features, dictionary, current)


def _regimen_features(
    b: _Builder,
    k: pd.DataFrame,
    codes: np.ndarray,
    cut: np.ndarray,
    weight: np.ndarray,
    bsa: np.ndarray,
    juvenile: np.ndarray,
    regimens: pd.DataFrame,
    index: pd.Index,
    vocabulary: Vocabulary,
    catalog: OptionCatalog,
    config: FeatureConfig,
) -> pd.DataFrame:
    """Current regimen, doses versus targets (dose-optimisation flags), lines of therapy, cumulative prednisone.

    A juvenile decision's doses are judged against the drugs' juvenile targets (configs/drugs.yaml `juvenile`) with
    the weight and body surface measured before it, an adult's against the adult targets."""
    n = len(k)
    reg = RegimenIndex(regimens, index, vocabulary, catalog, config.continuity_gap_days,
                       config.decisions.option_ignore_classes, config.decisions.stability_ignore_classes)
    st = reg.state(codes, cut)
    q = st["query"].to_numpy()
    rows = st["row"].to_numpy()
    agg = current_drugs(reg, st, weight, bsa)
    aq = agg["query"].to_numpy()
    latest_row = agg["row"].to_numpy()  # rows are sorted by start within a drug: max position = latest start
    frame = reg.frame
    route = frame["route"].astype(object).to_numpy()[latest_row] if len(agg) else np.zeros(0, dtype=object)
    targets = vocabulary.target_daily_mg(
        pd.Series(agg["generic"].to_numpy(), dtype=object), pd.Series(route, dtype=object),
        pd.Series(weight[aq]), pd.Series(bsa[aq]), juvenile=juvenile[aq],
    )
    intensity = agg["daily_mg"].to_numpy(float)
    low = targets["target_low"].to_numpy(float)
    high = targets["target_high"].to_numpy(float)
    # one verdict for the flags, the side table and the clinician page (features.vocabulary.dose_status): a target
    # whose body size is missing is "unknown" and flags nothing
    status = dose_status(intensity, low, high, targets["target_defined"].to_numpy(bool),
                         targets["induction_only"].to_numpy(bool), config.dose_tolerance)
    below, above = status == "below", status == "above"
    has_target = (status != "no_target") & ~np.isnan(low)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = intensity / low
    months_on = (cut[aq] - agg["run_start"].to_numpy()) / DAYS_PER_MONTH

    generics = list(vocabulary.generics)
    gpos = pd.Index(generics).get_indexer(agg["generic"].to_numpy())

    def wide(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((n, len(generics)), fill, dtype=float)
        ok = gpos >= 0
        out[aq[ok], gpos[ok]] = values[ok]
        return out

    on = wide(np.ones(len(agg)), 0.0)
    frac_w = wide(np.where(has_target, fraction, np.nan), np.nan)
    below_w = wide(below.astype(float), 0.0)
    above_w = wide(above.astype(float), 0.0)
    months_w = wide(months_on, np.nan)
    for j, g in enumerate(generics):
        drug = vocabulary.drug(g)
        b.add(f"on_{g}", on[:, j], "current_regimen", drug.label, f"on {drug.label}", "0/1",
              f"{drug.label} is part of the current regimen")
        b.add(f"{g}_months_on", months_w[:, j], "current_regimen", drug.label, f"months on {drug.label}",
              "months", f"time on {drug.label} in its current continuous exposure (NaN when not on it)")
        if drug.target.has_target:
            juv = (f"; juvenile: {drug.juvenile.text}" if drug.juvenile is not None and drug.juvenile.has_target
                   else "; juvenile: not judged" if drug.juvenile is not None else "")
            b.add(f"{g}_dose_fraction", frac_w[:, j], "dose_optimisation", drug.label,
                  f"{drug.label} dose as a fraction of target", "fraction of target",
                  f"current intensity / lower end of the target ({drug.text}{juv}); NaN when not on it or no weight")
            b.add(f"{g}_below_target", below_w[:, j], "dose_optimisation", drug.label,
                  f"{drug.label} below target dose", "0/1",
                  f"on {drug.label} below its target ({drug.text}{juv}) beyond the tolerance")
            b.add(f"{g}_above_target", above_w[:, j], "dose_optimisation", drug.label,
                  f"{drug.label} above target dose", "0/1",
                  f"on {drug.label} above its target ({drug.text}{juv}) beyond the tolerance")
    below_any = np.zeros(n)
    np.add.at(below_any, aq, below.astype(float))
    b.add("n_drugs_below_target", below_any, "dose_optimisation", "doses below target",
          "number of drugs below target dose", "count", "current drugs whose intensity is below the target band")
    b.add("any_below_target", below_any > 0, "dose_optimisation", "doses below target",
          "any drug below target dose", "0/1", "the dose-optimisation option is open: a drug is below target")

    # --- prednisone
    gluco = np.isin(agg["generic"].to_numpy(), [d.generic for d in vocabulary.drugs if d.drug_class == "glucocorticoid"])
    pred_mg = np.zeros(n)
    np.add.at(pred_mg, aq[gluco], np.nan_to_num(intensity[gluco]))
    goal = next((d.target.taper_goal_mg_per_day for d in vocabulary.drugs
                 if d.drug_class == "glucocorticoid" and d.target.taper_goal_mg_per_day is not None), 7.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        pred_kg = pred_mg / weight
    b.add("prednisone_mg_day", pred_mg, "current_regimen", "prednisone dose", "prednisone dose", "mg/day",
          "current glucocorticoid dose as prednisone mg/day (0 when not on a glucocorticoid)")
    b.add("prednisone_mg_kg_day", pred_kg, "current_regimen", "prednisone dose", "prednisone dose per kg",
          "mg/kg/day", "current prednisone dose per kg of the latest body weight (NaN without a weight)")
    b.add("prednisone_above_taper_goal", pred_mg > goal, "dose_optimisation", "prednisone dose",
          "prednisone above taper goal", "0/1", f"prednisone above the taper goal of {goal:g} mg/day")
    # cumulative prednisone: dose × days on it up to the cut-off, over every glucocorticoid row started before it
    is_gluco_row = np.isin(reg.drug_class[rows], ["glucocorticoid"])
    stop = np.minimum(st["end_as_of"].to_numpy() + 1, cut[q])
    days_on = np.clip(stop - st["start"].to_numpy(), 0, None)
    cum = np.zeros(n)
    np.add.at(cum, q[is_gluco_row], np.nan_to_num(reg.daily_mg[rows][is_gluco_row] * days_on[is_gluco_row]))
    b.add("cumulative_prednisone_g", cum / 1000.0, "current_regimen", "prednisone exposure",
          "cumulative prednisone", "g", "total glucocorticoid taken (prednisone mg/day × days) before the decision")

    # --- counts, rituximab timing, lines of therapy, stability
    is_immuno = np.isin(agg["generic"].to_numpy(), [d.generic for d in vocabulary.drugs if d.immunosuppressant])
    n_immuno = np.bincount(aq[is_immuno], minlength=n).astype(float)
    b.add("n_immunosuppressants", n_immuno, "current_regimen", "immunosuppression burden",
          "number of immunosuppressants at once", "count", "current immunosuppressive drugs (not IVIG, HCQ, steroids)")
    b.add("n_current_drugs", np.bincount(aq, minlength=n).astype(float), "current_regimen",
          "immunosuppression burden", "number of current drugs", "count", "all current myositis drugs")
    rx = st[st["rituximab"].to_numpy()]
    last_rx = np.full(n, -np.inf)
    np.maximum.at(last_rx, rx["query"].to_numpy(), rx["last_dose_day"].to_numpy(float))
    rx_months = np.where(np.isinf(last_rx), np.nan, (cut - last_rx) / DAYS_PER_MONTH)
    b.add("months_since_rituximab", rx_months, "current_regimen", "rituximab", "months since the last rituximab dose",
          "months", "time since the last recorded rituximab infusion; on a running schedule, since its latest course "
          "began (NaN if never given)")
    b.add("rituximab_ever", ~np.isnan(rx_months), "current_regimen", "rituximab", "rituximab ever given", "0/1",
          "rituximab was given at some time before the decision")
    # lines of therapy: distinct non-glucocorticoid drugs ever started before the cut-off
    steroid_sparing = (reg.drug_class[rows] != "glucocorticoid") & pd.notna(st["generic"]).to_numpy()
    lines = st.loc[steroid_sparing, ["query", "generic"]].drop_duplicates()
    b.add("lines_of_therapy", np.bincount(lines["query"].to_numpy(), minlength=n).astype(float), "current_regimen",
          "treatment history", "lines of therapy so far", "count",
          "distinct steroid-sparing drugs or immunoglobulin ever started before the decision")
    last_change = last_change_day(st, cut, n)
    b.add("months_since_regimen_change", (cut - last_change) / DAYS_PER_MONTH, "current_regimen",
          "treatment history", "months on the current regimen", "months",
          "time since the last start, stop or dose change of a steroid-sparing drug (NaN if never treated)")

    # --- the side table of current drugs (pages and explanations name the target used)
    keys_q = k.iloc[aq].reset_index(drop=True)
    side = pd.DataFrame(
        {
            "patient_id": keys_q["patient_id"].to_numpy(),
            "decision_id": keys_q["decision_id"].to_numpy(),
            "as_of": keys_q["as_of"].to_numpy(),
            "generic": agg["generic"].to_numpy(),
            "label": [vocabulary.drug(g).label if g in generics else g for g in agg["generic"].to_numpy()],
            "drug": frame["drug"].astype(object).to_numpy()[latest_row] if len(agg) else [],
            "dose": pd.to_numeric(frame["dose"], errors="coerce").to_numpy(float)[latest_row] if len(agg) else [],
            "dose_unit": frame["dose_unit"].astype(object).to_numpy()[latest_row] if len(agg) else [],
            "route": route,
            "interval": frame["interval"].astype(object).to_numpy()[latest_row] if len(agg) else [],
            "start_date": from_days(agg["run_start"].to_numpy()),
            # rituximab is given in courses months apart: when the latest began and how the record has it (given,
            # scheduled by an ongoing order, or stopped after it): the page's re-dose reminder
            "last_course_date": pd.to_datetime(agg["course_start_day"].to_numpy(), unit="D").as_unit("ns"),
            "last_course_record": agg["course_record"].to_numpy(),
            "months_on": months_on,
            "intensity_mg_day": intensity,
            "target_low_mg_day": low,
            "target_high_mg_day": high,
            "target_text": targets["target_text"].to_numpy(),
            "target_source": targets["target_source"].to_numpy(),
            "fraction_of_target": np.where(has_target, fraction, np.nan),
            "status": status,
            "weight_kg": weight[aq],
            "bsa_m2": bsa[aq],
            "juvenile": juvenile[aq],
        }
    )
    return side


def age_at(as_of: np.ndarray, birth_year: np.ndarray) -> np.ndarray:
    """Age in years at each decision day from the birth year (as_of year − birth year; NaN without a birth year)."""
    return (from_days(as_of).astype("datetime64[Y]").astype(np.int64) + 1970) - np.asarray(birth_year, dtype=float)


def juvenile_decisions(k: pd.DataFrame, as_of: np.ndarray, patients: pd.DataFrame, vocabulary: Vocabulary
                       ) -> np.ndarray:
    """Which decisions are juvenile (`Vocabulary.is_juvenile`: younger than its `juvenile_age` at the decision; the
    diagnosis juvenile DM only where the age is unknown): their doses are judged against the juvenile targets."""
    p, idx = _patient_rows(k, patients)
    diagnosis = (p["diagnosis"].astype(object).to_numpy()[idx] if "diagnosis" in p.columns
                 else np.full(len(k), None, dtype=object))
    birth = (pd.to_numeric(p["birth_year"], errors="coerce").to_numpy(float)[idx] if "birth_year" in p.columns
             else np.full(len(k), np.nan))
    return vocabulary.is_juvenile(diagnosis, age_at(as_of, birth))


def _patient_rows(k: pd.DataFrame, patients: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The patients table by patient_id and each key row's position in it; a key of an unknown patient is an error
    naming its row."""
    p = patients.assign(patient_id=patients["patient_id"].astype(str)).drop_duplicates("patient_id")
    p = p.set_index("patient_id")
    idx = p.index.get_indexer(k["patient_id"].to_numpy())
    if (idx < 0).any():
        row = int(np.flatnonzero(idx < 0)[0])
        raise ValueError(f"keys row {row} column 'patient_id': {k['patient_id'].iloc[row]!r} is not in the "
                         "patients table [rule: known_patient]")
    return p, idx


def _disease_features(b: _Builder, codes: np.ndarray, as_of: np.ndarray, tracks: Mapping[str, Track],
                      config: FeatureConfig) -> None:
    """Latest core set and CDASI values, their change over recent windows, the worst in the last year, enzymes."""
    for measure, label, unit, higher_worse in DISEASE_MEASURES:
        t = tracks[measure]
        values = t.columns["value"]
        if measure == "mmt8":  # comparable across the 0-80 and 0-150 scales
            with np.errstate(invalid="ignore", divide="ignore"):
                values = values / t.columns["scale"] * 100.0
        pos = t.latest(codes, as_of)
        latest = np.where(pos >= 0, values[np.maximum(pos, 0)] if len(values) else np.nan, np.nan)
        clinical = label
        b.add(f"{measure}_latest", latest, "disease_activity", clinical, f"latest {label}", unit,
              f"most recent {label} before the decision")
        b.add(f"{measure}_observed", pos >= 0, "disease_activity", clinical, f"{label} recorded", "0/1",
              f"{label} was recorded at least once before the decision")
        b.add(days_since_feature(measure), as_of - t.take_days(pos), "disease_activity", clinical,
              f"days since the latest {label}", "days", f"age of the latest {label} (NaN if never recorded)")
        for window in config.change_windows_days:
            then_pos = t.latest(codes, as_of - window + 1)  # latest value at least `window` days before as_of
            then = np.where(then_pos >= 0, values[np.maximum(then_pos, 0)] if len(values) else np.nan, np.nan)
            months = window_months(window)
            # nothing recorded within the window gives 0 (the last value carried forward; with the days since the
            # latest value the model tells it from a stable measure — as NaN every metric was worse); pages word it
            b.add(change_feature(measure, window), latest - then, "disease_activity", clinical,
                  f"change in {label} over {months} months", unit,
                  f"latest {label} minus the value {months} months earlier (positive = higher; 0 when nothing was "
                  f"recorded in those months)")
        ufunc = np.fmax if higher_worse else np.fmin
        worst = t.window_reduce(codes, as_of - config.worst_window_days, as_of, values, ufunc)
        wm = window_months(config.worst_window_days)
        b.add(f"{measure}_worst_{wm}m", worst, "disease_activity", clinical, f"worst {label} in {wm} months", unit,
              f"{'highest' if higher_worse else 'lowest'} {label} in the {wm} months before the decision")
    ratios = []
    for enzyme in ENZYMES:
        t = tracks[enzyme]
        pos = t.latest(codes, as_of)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append(t.take("value", pos) / t.take("uln", pos))
    stacked = np.column_stack(ratios)
    any_enzyme = ~np.all(np.isnan(stacked), axis=1)
    most = np.where(any_enzyme, np.nanmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=1), np.nan)
    b.add("enzyme_max_x_uln", most, "disease_activity", "muscle enzymes", "most abnormal muscle enzyme",
          "× upper limit of normal", "highest latest CK, aldolase, AST, ALT or LDH as a multiple of its upper limit")
    b.add("enzyme_observed", any_enzyme, "disease_activity", "muscle enzymes", "muscle enzyme recorded", "0/1",
          "a muscle enzyme with its upper limit of normal was recorded before the decision")
    ck = ratios[0]
    b.add("ck_x_uln", ck, "disease_activity", "muscle enzymes", "creatine kinase", "× upper limit of normal",
          "latest CK as a multiple of its upper limit of normal")


def _patient_features(b: _Builder, k: pd.DataFrame, as_of: np.ndarray, patients: pd.DataFrame) -> None:
    """Age, sex, diagnosis, disease duration, antibodies, ILD and cancer association (static or dated before)."""
    p, idx = _patient_rows(k, patients)

    def col(name: str) -> pd.Series:
        return p[name].iloc[idx].reset_index(drop=True) if name in p.columns else pd.Series([np.nan] * len(idx))

    birth = pd.to_numeric(col("birth_year"), errors="coerce").to_numpy(float)
    b.add("age_years", age_at(as_of, birth), "patient", "age", "age", "years", "age in years at the decision")
    b.add("sex_female", col("sex").astype(str).str.upper().eq("F").to_numpy(), "patient", "sex", "female sex", "0/1",
          "recorded sex is female")
    diagnosis = col("diagnosis").astype(str).to_numpy()
    for code in DIAGNOSES:
        b.add(f"diagnosis_{code}", diagnosis == code, "patient", "diagnosis", code.replace("_", " "), "0/1",
              f"diagnosis is {code.replace('_', ' ')}")
    diag_day = to_days(col("diagnosis_date"))
    known = (diag_day < FAR_FUTURE) & (diag_day < as_of)
    b.add("disease_duration_years", np.where(known, (as_of - diag_day) / 365.25, np.nan), "patient",
          "disease duration", "disease duration", "years", "time from diagnosis to the decision")
    for flag, label, description in ANTIBODY_FLAGS:
        values = col(flag).astype("boolean").fillna(False).to_numpy(bool) if flag in p.columns else np.zeros(len(idx))
        b.add(flag, values, "patient", "myositis antibodies", label, "0/1", description)
    for flag, label in (("ild", "interstitial lung disease"), ("cancer_associated", "cancer-associated myositis")):
        values = col(flag).astype("boolean").fillna(False).to_numpy(bool) if flag in p.columns else np.zeros(len(idx))
        b.add(flag, values, "patient", label, label, "0/1", f"{label} recorded")


def _safety_features(b: _Builder, codes: np.ndarray, as_of: np.ndarray, tracks: Mapping[str, Track],
                     events: pd.DataFrame, index: pd.Index, config: FeatureConfig) -> None:
    """Serious/opportunistic infections and severe cytopenias in recent windows; latest safety laboratory values."""
    ev_codes = patient_codes(index, events["patient_id"])
    ev_days = to_days(events["date"])
    kind = events["event"].astype(str).to_numpy()
    grade = pd.to_numeric(events.get("grade", pd.Series(np.nan, index=events.index)), errors="coerce").to_numpy(float)
    specs: tuple[tuple[str, Callable[[], np.ndarray], str], ...] = (
        ("serious_infections", lambda: kind == "serious_infection", "serious infections"),
        ("opportunistic_infections", lambda: kind == "opportunistic_infection", "opportunistic infections"),
        ("severe_cytopenias", lambda: (kind == "cytopenia") & (grade >= config.cytopenia_min_grade),
         f"cytopenias of grade ≥ {config.cytopenia_min_grade}"),
        ("thromboembolisms", lambda: kind == "thromboembolism", "thrombo-embolic events"),
    )
    for name, select, label in specs:
        sel = select()
        t = Track(ev_codes[sel], ev_days[sel], {"count": np.ones(int(sel.sum()))})
        # Track averages same-day duplicates; count distinct event days instead (no double counting of one episode)
        for window in config.safety_windows_days:
            lo, hi = t.bounds(codes, as_of - window, as_of)
            months = window_months(window)
            b.add(f"{name}_{months}m", (hi - lo).astype(float), "safety", label, f"{label} in {months} months",
                  "count (days with an event)", f"{label} in the {months} months before the decision")
    for measure, label, unit in SAFETY_LABS:
        t = tracks[measure]
        pos = t.latest(codes, as_of)
        b.add(f"{measure}_lab_latest", t.take("value", pos), "safety", label, f"latest {label}", unit,
              f"most recent {label} before the decision (NaN if never measured)")
        b.add(f"{measure}_lab_observed", pos >= 0, "safety", label, f"{label} measured", "0/1",
              f"{label}: a result is recorded before the decision")


# ---------------------------------------------------------------------------------------------------------------
# eligibility from the current regimen


def option_eligibility(
    feature_set: FeatureSet, catalog: OptionCatalog, vocabulary: Vocabulary
) -> pd.DataFrame:
    """`eligible_<option>` (bool) and `ineligible_reason_<option>` (str) per feature row, from the current drugs
    (rituximab counts while active) and whether any current drug is below its target dose."""
    f = feature_set.features
    on = pd.DataFrame({g: f[f"on_{g}"].to_numpy() > 0 for g in vocabulary.generics}, index=f.index)
    below = pd.Series(f["any_below_target"].to_numpy() > 0, index=f.index)
    eligible, reason = catalog.eligibility(on, below)
    out = pd.DataFrame(index=f.index)
    for name in catalog.names:
        out[f"eligible_{name}"] = eligible[name].to_numpy(bool)
        out[f"ineligible_reason_{name}"] = reason[name].astype(str).to_numpy()
    return out
