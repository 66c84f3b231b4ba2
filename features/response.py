"""Myositis response criteria: the ACR/EULAR 2016 Total Improvement Score and the IMACS Definition of Improvement.

Sources (see docs/sources.md §1):
- Total Improvement Score (TIS), improvement categories: Aggarwal R, Rider LG, Ruperto N, et al. 2016 ACR/EULAR
  criteria for minimal, moderate, and major clinical response in adult dermatomyositis and polymyositis.
  Arthritis Rheumatol 2017;69(5):898-910 / Ann Rheum Dis 2017;76(5):792-801 (points: PMC5577002, Table 3);
  methodology Rider LG et al., Rheumatology 2017;56:1884-1893. Juvenile DM thresholds 30/45/70.
- IMACS Definition of Improvement (DOI, 2004): >= 20 % improvement in 3 of any 6 core set measures, at most 2
  worse by >= 25 %, and manual muscle testing not among the worsened.

The public functions take aligned wide frames (one row per baseline/follow-up pair), validate them once (every
violation named by table, row, column and rule) and call one numpy kernel per criterion (`tis_arrays`,
`doi_arrays`); callers that already hold valid arrays, such as the simulator's Monte Carlo, call the kernels
directly with broadcastable shapes, so there is one scoring implementation with two entry points. Band tables,
instrument ranges and thresholds live in frozen pydantic models defaulting to the published values; the enzyme
rule the reference marks [unconfirmed] is a setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from features.config import Frozen

#: the six IMACS core set measures in display order (the enzyme is the most abnormal one at baseline).
CORE_SET: tuple[str, ...] = (
    "physician_global",
    "patient_global",
    "mmt8",
    "haq",
    "extramuscular_global",
    "enzyme",
)
#: the core set measures scored on a fixed instrument range where a lower value is better.
FIXED_RANGE_MEASURES: tuple[str, ...] = ("physician_global", "patient_global", "haq", "extramuscular_global")
#: muscle enzymes in their tie-break order (the first listed wins a tie for "most abnormal").
ENZYMES: tuple[str, ...] = ("ck", "aldolase", "ast", "alt", "ldh")
#: improvement categories, ordered from worst to best.
CATEGORIES: tuple[str, ...] = ("none", "minimal", "moderate", "major")

_EPS_TOTAL = 1e-9


class BandTable(Frozen):
    """Points for a percent improvement: band i covers (upper_edges[i-1], upper_edges[i]]; upper edges inclusive."""

    upper_edges: tuple[float, ...]
    points: tuple[float, ...]

    @model_validator(mode="after")
    def _check(self) -> BandTable:
        if len(self.points) != len(self.upper_edges) + 1:
            raise ValueError(
                f"a band table needs one more points value than upper edges "
                f"(got {len(self.upper_edges)} edges, {len(self.points)} points)"
            )
        if any(b <= a for a, b in zip(self.upper_edges, self.upper_edges[1:], strict=False)):
            raise ValueError(f"band upper edges must rise strictly, got {self.upper_edges}")
        if any(p < 0 for p in self.points) or any(
            b < a for a, b in zip(self.points, self.points[1:], strict=False)
        ):
            raise ValueError(f"band points must be non-negative and non-decreasing, got {self.points}")
        return self

    @property
    def max_points(self) -> float:
        return self.points[-1]

    def score(self, percent: np.ndarray) -> np.ndarray:
        """Points for each (already rounded) percent improvement; NaN stays NaN, worsening is the lowest band."""
        percent = np.asarray(percent, dtype=float)
        band = np.zeros(percent.shape, dtype=np.intp)
        for edge in self.upper_edges:  # band = number of upper edges strictly below the percent
            band += percent > edge
        out = np.asarray(self.points, dtype=float)[band]
        np.copyto(out, np.nan, where=np.isnan(percent))
        return out


def _standard_bands(points: tuple[float, ...]) -> BandTable:
    return BandTable(upper_edges=(5.0, 15.0, 25.0, 40.0), points=points)


class Instruments(Frozen):
    """Ranges of the core set instruments (the TIS denominators and the validity limits of the inputs)."""

    physician_global_max: float = Field(10.0, gt=0, description="VAS 0-10 cm")
    patient_global_max: float = Field(10.0, gt=0, description="VAS 0-10 cm")
    haq_max: float = Field(3.0, gt=0, description="HAQ disability index 0-3")
    extramuscular_global_max: float = Field(10.0, gt=0, description="MDAAT extramuscular VAS 0-10 cm")
    mmt8_scales: tuple[float, ...] = Field((80.0, 150.0), min_length=1, description="0-80 or 0-150")
    enzymes: tuple[str, ...] = Field(ENZYMES, min_length=1, description="tie-break order for most abnormal")

    @model_validator(mode="after")
    def _check(self) -> Instruments:
        if len(set(self.enzymes)) != len(self.enzymes):
            raise ValueError(f"enzymes must be unique, got {self.enzymes}")
        if any(s <= 0 for s in self.mmt8_scales):
            raise ValueError(f"mmt8 scales must be positive, got {self.mmt8_scales}")
        return self

    def range_of(self, measure: str) -> float:
        """The instrument range of a fixed-range core set measure."""
        return float(getattr(self, f"{measure}_max"))


class TisRules(Frozen):
    """The ACR/EULAR 2016 scoring rules; defaults are the published table (docs/sources.md §1)."""

    physician_global: BandTable = _standard_bands((0.0, 7.5, 15.0, 17.5, 20.0))
    patient_global: BandTable = _standard_bands((0.0, 2.5, 5.0, 7.5, 10.0))
    haq: BandTable = _standard_bands((0.0, 5.0, 7.5, 7.5, 10.0))
    enzyme: BandTable = _standard_bands((0.0, 2.5, 5.0, 7.5, 7.5))
    extramuscular_global: BandTable = _standard_bands((0.0, 7.5, 12.5, 15.0, 20.0))
    mmt8: BandTable = BandTable(upper_edges=(2.0, 10.0, 20.0, 30.0), points=(0.0, 10.0, 20.0, 27.5, 32.5))
    instruments: Instruments = Instruments()
    #: [unconfirmed] how the enzyme change becomes a percent: of its baseline value, or of its baseline ULN.
    enzyme_change: Literal["relative_to_baseline", "relative_to_uln"] = "relative_to_baseline"
    #: percents are rounded to this many decimals before banding, so 15.000000000000002 % counts as 15 %.
    percent_decimals: int = Field(9, ge=0, le=12)
    adult_thresholds: tuple[float, float, float] = (20.0, 40.0, 60.0)
    juvenile_thresholds: tuple[float, float, float] = (30.0, 45.0, 70.0)

    @model_validator(mode="after")
    def _check(self) -> TisRules:
        total = sum(self.bands(m).max_points for m in CORE_SET)
        if abs(total - 100.0) > _EPS_TOTAL:
            raise ValueError(f"the maximum points of the six core set measures must add to 100, got {total}")
        for name in ("adult_thresholds", "juvenile_thresholds"):
            thr = getattr(self, name)
            if not (0 < thr[0] < thr[1] < thr[2] <= 100):
                raise ValueError(f"{name} must rise strictly within (0, 100], got {thr}")
        return self

    def bands(self, measure: str) -> BandTable:
        """The band table of one core set measure."""
        return getattr(self, measure)


class DoiRules(Frozen):
    """The IMACS 2004 Definition of Improvement; percent changes are relative to the baseline value."""

    improvement_percent: float = Field(20.0, gt=0)
    min_improved: int = Field(3, ge=1, le=6)
    worsening_percent: float = Field(25.0, gt=0)
    max_worsened: int = Field(2, ge=0, le=6)
    mmt8_may_worsen: bool = False
    percent_decimals: int = Field(9, ge=0, le=12)
    instruments: Instruments = Instruments()


DEFAULT_TIS_RULES = TisRules()
DEFAULT_DOI_RULES = DoiRules()


class ResponseInputError(ValueError):
    """Bad response-criteria input; `violations` has one row per finding (table, row, column, rule, message)."""

    def __init__(self, violations: pd.DataFrame) -> None:
        self.violations = violations.reset_index(drop=True)
        shown = "\n".join(f"  - {m}" for m in self.violations["message"].head(10))
        more = len(self.violations) - 10
        tail = f"\n  ... and {more} more (see .violations)" if more > 0 else ""
        super().__init__(
            f"{len(self.violations)} invalid value(s) in the response-criteria input:\n{shown}{tail}"
        )


# ----------------------------------------------------------------------------------------------------------------
# input checks


def _violations(table: str, rows: pd.Index, column: str, rule: str, values: np.ndarray | None, what: str):
    """One violation frame for the rows of one table and column that break one rule."""
    shown = [f"{v!r}" for v in np.asarray(values).tolist()] if values is not None else [""] * len(rows)
    msgs = [
        f"{table} row {r!r} column {column!r}: {what}" + (f" (got {v})" if v else "") + f" [rule: {rule}]"
        for r, v in zip(rows, shown, strict=True)
    ]
    return pd.DataFrame(
        {"table": table, "row": list(rows), "column": column, "rule": rule, "message": msgs},
        columns=["table", "row", "column", "rule", "message"],
    )


def _numeric(frame: pd.DataFrame, table: str, column: str, found: list[pd.DataFrame]) -> np.ndarray:
    """A column as float64; values that are not numbers are reported (and treated as missing)."""
    col = frame[column]
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=float, na_value=np.nan)
    if pd.api.types.is_bool_dtype(col.dtype):  # True/False is not a measurement
        coerced, bad = pd.Series(np.nan, index=col.index), col.notna().to_numpy()
    else:
        coerced = pd.to_numeric(col, errors="coerce")
        is_bool = col.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(bool)
        bad = (coerced.isna() & col.notna()).to_numpy() | is_bool
    if bad.any():
        found.append(
            _violations(table, frame.index[bad], column, "numeric", col.to_numpy()[bad], "not a number")
        )
    return np.where(bad, np.nan, coerced.to_numpy(dtype=float, na_value=np.nan))


def _check_range(
    values: np.ndarray,
    low: float | np.ndarray,
    high: float | np.ndarray,
    index: pd.Index,
    table: str,
    column: str,
    what: str,
    found: list[pd.DataFrame],
    low_open: bool = False,
) -> None:
    with np.errstate(invalid="ignore"):
        below = values <= low if low_open else values < low
        bad = below | (values > high) | np.isinf(values)
    if bad.any():
        found.append(_violations(table, index[bad], column, "range", values[bad], what))


def _read_visit(frame: pd.DataFrame, table: str, instruments: Instruments, found: list[pd.DataFrame]):
    """Validate one visit frame and return its core set columns and enzyme pairs as float arrays."""
    cols: dict[str, np.ndarray] = {}
    idx = frame.index
    required = (*FIXED_RANGE_MEASURES, "mmt8", "mmt8_scale")
    for column in required:
        if column not in frame.columns:
            found.append(
                _violations(table, pd.Index([None]), column, "required_column", None, "column is missing")
            )
            cols[column] = np.full(len(frame), np.nan)
            continue
        cols[column] = _numeric(frame, table, column, found)
    for measure in FIXED_RANGE_MEASURES:
        hi = instruments.range_of(measure)
        _check_range(
            cols[measure], 0.0, hi, idx, table, measure, f"outside the instrument range 0-{hi:g}", found
        )
    scale, mmt = cols["mmt8_scale"], cols["mmt8"]
    bad_scale = ~np.isnan(scale) & ~np.isin(scale, np.asarray(instruments.mmt8_scales, dtype=float))
    if bad_scale.any():
        allowed = " or ".join(f"{s:g}" for s in instruments.mmt8_scales)
        found.append(
            _violations(
                table, idx[bad_scale], "mmt8_scale", "allowed_value", scale[bad_scale], f"must be {allowed}"
            )
        )
    no_scale = ~np.isnan(mmt) & np.isnan(scale)
    if no_scale.any():
        found.append(
            _violations(
                table, idx[no_scale], "mmt8_scale", "required_with_mmt8", None, "mmt8 has no scale (80/150)"
            )
        )
    _check_range(
        mmt, 0.0, np.where(bad_scale, np.inf, scale), idx, table, "mmt8", "outside 0-mmt8_scale", found
    )
    for enzyme in instruments.enzymes:
        uln_col = f"{enzyme}_uln"
        if enzyme not in frame.columns:
            continue
        value = _numeric(frame, table, enzyme, found)
        _check_range(value, 0.0, np.inf, idx, table, enzyme, "an enzyme level must be >= 0 and finite", found)
        if uln_col in frame.columns:
            uln = _numeric(frame, table, uln_col, found)
            _check_range(
                uln, 0.0, np.inf, idx, table, uln_col, "an upper limit of normal must be > 0", found, True
            )
        else:
            uln = np.full(len(frame), np.nan)
            if table == "baseline":
                found.append(
                    _violations(
                        table, pd.Index([None]), uln_col, "required_column", None, f"{enzyme} needs {uln_col}"
                    )
                )
        if table == "baseline":
            no_uln = ~np.isnan(value) & np.isnan(uln)
            if no_uln.any():
                found.append(
                    _violations(
                        table,
                        idx[no_uln],
                        uln_col,
                        "required_with_value",
                        None,
                        f"a baseline {enzyme} value needs its upper limit of normal",
                    )
                )
        cols[enzyme], cols[uln_col] = value, uln
    return cols


def _read_pair(baseline: pd.DataFrame, followup: pd.DataFrame, instruments: Instruments):
    """Validate a baseline/follow-up pair; raise ResponseInputError listing every problem."""
    for name, frame in (("baseline", baseline), ("followup", followup)):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    found: list[pd.DataFrame] = []
    if not baseline.index.equals(followup.index):
        if len(baseline) != len(followup):
            what, row = f"has {len(followup)} rows, baseline has {len(baseline)}", None
        else:
            pos = int(np.flatnonzero(baseline.index.to_numpy() != followup.index.to_numpy())[0])
            what, row = f"index differs from baseline at position {pos}", followup.index[pos]
        raise ResponseInputError(
            _violations("followup", pd.Index([row]), "(index)", "aligned_index", None, what)
        )
    b = _read_visit(baseline, "baseline", instruments, found)
    f = _read_visit(followup, "followup", instruments, found)
    if found:
        raise ResponseInputError(pd.concat(found, ignore_index=True))
    return b, f


# ----------------------------------------------------------------------------------------------------------------
# shared arithmetic: the kernels below take already-valid float arrays (the public functions validate first)

#: core set arrays by name (`physician_global`, …, `mmt8_scale`, each enzyme and `<enzyme>_uln`), any shapes that
#: broadcast together: e.g. baselines of shape (n, 1) against follow-up draws of shape (n, k).
Arrays = Mapping[str, np.ndarray]


def _safe_percent(change: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """change / denominator x 100; no change is 0 % and a change from a zero denominator is +/-inf %."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.asarray(change / denominator * 100.0, dtype=float)  # x / 0 is +/-inf in IEEE arithmetic
    np.copyto(out, 0.0, where=change == 0)  # 0 / 0 is no change, not NaN
    return out


class EnzymeChoice(NamedTuple):
    """The most abnormal muscle enzyme of each pair and its values (NaN, position -1 when none qualifies)."""

    position: np.ndarray  # index into the rules' `instruments.enzymes`
    baseline: np.ndarray
    followup: np.ndarray
    uln: np.ndarray  # the baseline upper limit of normal


def _shape(b: Arrays, f: Arrays) -> tuple[int, ...]:
    return np.broadcast_shapes(np.shape(b["physician_global"]), np.shape(f["physician_global"]))


def _most_abnormal_enzyme(b: Arrays, f: Arrays, enzymes: tuple[str, ...], decimals: int) -> EnzymeChoice:
    """Per pair: the enzyme with the highest baseline value/ULN among those measured at both visits (first listed
    wins a tie), with its baseline value, follow-up value and baseline ULN."""
    shape = _shape(b, f)
    position = np.full(shape, -1, dtype=np.int64)
    best = np.full(shape, -np.inf)
    base, follow, uln = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for pos, enzyme in enumerate(enzymes):
        if enzyme not in b or enzyme not in f:
            continue
        bv, bu, fv = b[enzyme], b[f"{enzyme}_uln"], f[enzyme]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.round(bv / bu, decimals)  # NaN unless both baseline value and ULN are known
        # strictly greater: on a tie the enzyme listed first keeps its place (deterministic tie-break)
        take = (ratio > best) & ~np.isnan(fv)
        np.copyto(best, ratio, where=take)
        np.copyto(position, pos, where=take)
        np.copyto(base, bv, where=take)
        np.copyto(follow, fv, where=take)
        np.copyto(uln, bu, where=take)
    return EnzymeChoice(position, base, follow, uln)


def _mmt8_scale_differs(b: Arrays, f: Arrays) -> np.ndarray:
    """MMT-8 scored on different scales at the two visits: the change is not comparable."""
    bs, fs = b["mmt8_scale"], f["mmt8_scale"]
    return ~np.isnan(bs) & ~np.isnan(fs) & (bs != fs)


class TisArrays(NamedTuple):
    """What the TIS kernel returns, shaped like the broadcast inputs."""

    total: np.ndarray  # 0-100, NaN when a core set measure is missing
    points: dict[str, np.ndarray]  # per core set measure (CORE_SET)
    enzyme_position: np.ndarray  # -1: no enzyme measured at both visits
    mmt8_scale_differs: np.ndarray


def tis_arrays(b: Arrays, f: Arrays, rules: TisRules = DEFAULT_TIS_RULES) -> TisArrays:
    """The ACR/EULAR 2016 TIS arithmetic on valid float arrays, without input checks or frames.

    The one scoring implementation: `total_improvement_score` validates its frames and calls it; the simulator
    calls it directly on arrays it built within the instrument ranges (millions of Monte Carlo pairs).
    """
    inst = rules.instruments
    dec = rules.percent_decimals
    percent: dict[str, np.ndarray] = {}
    for measure in FIXED_RANGE_MEASURES:
        percent[measure] = (b[measure] - f[measure]) / inst.range_of(measure) * 100.0
    scale_differs = _mmt8_scale_differs(b, f)
    mmt_pct = (f["mmt8"] - b["mmt8"]) / b["mmt8_scale"] * 100.0
    percent["mmt8"] = np.where(scale_differs, np.nan, mmt_pct)
    enzyme = _most_abnormal_enzyme(b, f, inst.enzymes, dec)
    denominator = enzyme.baseline if rules.enzyme_change == "relative_to_baseline" else enzyme.uln
    percent["enzyme"] = _safe_percent(enzyme.baseline - enzyme.followup, denominator)
    points: dict[str, np.ndarray] = {}
    total = np.zeros(_shape(b, f))
    for measure in CORE_SET:
        points[measure] = rules.bands(measure).score(np.round(percent[measure], dec))
        total = total + points[measure]  # NaN when any measure is missing
    return TisArrays(total, points, enzyme.position, scale_differs)


def doi_arrays(b: Arrays, f: Arrays, rules: DoiRules = DEFAULT_DOI_RULES) -> tuple[np.ndarray, np.ndarray]:
    """The IMACS 2004 DOI arithmetic on valid float arrays: (met, undetermined) boolean arrays.

    The one DOI implementation: `imacs_doi` validates its frames and calls it; the simulator calls it directly.
    Percent changes are relative to each measure's baseline value.
    """
    dec = rules.percent_decimals
    enzyme = _most_abnormal_enzyme(b, f, rules.instruments.enzymes, dec)
    shape = _shape(b, f)
    missing = np.broadcast_to(_mmt8_scale_differs(b, f), shape)
    improved = np.zeros(shape, dtype=np.int64)
    worsened = np.zeros(shape, dtype=np.int64)
    mmt_worse = np.zeros(shape, dtype=bool)
    for measure in CORE_SET:
        if measure == "enzyme":
            change, base = enzyme.baseline - enzyme.followup, enzyme.baseline
        elif measure == "mmt8":
            change, base = f["mmt8"] - b["mmt8"], b["mmt8"]
        else:
            change, base = b[measure] - f[measure], b[measure]
        pct = np.round(_safe_percent(change, base), dec)
        missing = missing | np.isnan(pct)
        improved = improved + (pct >= rules.improvement_percent)
        worse = pct <= -rules.worsening_percent
        worsened = worsened + worse
        if measure == "mmt8" and not rules.mmt8_may_worsen:
            mmt_worse = mmt_worse | worse
    met = (improved >= rules.min_improved) & (worsened <= rules.max_worsened) & ~mmt_worse
    return met, missing


def _labels(codes: np.ndarray, labels: tuple[str, ...] | list[str]) -> pd.Categorical:
    """A categorical of `labels` from integer codes (-1 = missing), without a Python loop per row."""
    return pd.Categorical.from_codes(codes, categories=list(labels))


def _reasons(masks: list[tuple[str, np.ndarray]], n: int) -> pd.Categorical:
    """Join the reasons that apply to each row with '; ' (missing when none); built per distinct combination."""
    code = np.zeros(n, dtype=np.int64)
    for bit, (_, mask) in enumerate(masks):
        code |= mask.astype(np.int64) << bit
    uniq, inverse = np.unique(code, return_inverse=True)
    text = ["; ".join(r for bit, (r, _) in enumerate(masks) if c >> bit & 1) for c in uniq.tolist()]
    labels = [t for t in text if t]
    codes = np.asarray([labels.index(t) if t else -1 for t in text], dtype=np.int64)
    return _labels(codes[inverse.reshape(-1)], labels)


# ----------------------------------------------------------------------------------------------------------------
# Total Improvement Score


def total_improvement_score(
    baseline: pd.DataFrame, followup: pd.DataFrame, rules: TisRules = DEFAULT_TIS_RULES
) -> pd.DataFrame:
    """ACR/EULAR 2016 Total Improvement Score (0-100) for each aligned baseline/follow-up row, with the points
    of each core set measure, the enzyme used and why a score is missing (NaN when any core set measure is)."""
    inst = rules.instruments
    b, f = _read_pair(baseline, followup, inst)
    n = len(baseline)
    scored = tis_arrays(b, f, rules)
    masks: list[tuple[str, np.ndarray]] = []
    for measure in CORE_SET[:-1]:
        masks.append((f"missing baseline {measure}", np.isnan(b[measure])))
        masks.append((f"missing follow-up {measure}", np.isnan(f[measure])))
    masks.append(("mmt8_scale differs between baseline and follow-up", scored.mmt8_scale_differs))
    masks.append(("no muscle enzyme measured at both baseline and follow-up", scored.enzyme_position < 0))
    result = pd.DataFrame(
        {
            "total_improvement_score": scored.total,
            "missing_reason": _reasons(masks, n),
            **{f"points_{m}": scored.points[m] for m in CORE_SET},
            "enzyme_used": _labels(scored.enzyme_position, inst.enzymes),
        }
    )
    result.index = baseline.index
    return result


def _threshold_table(juvenile: bool | np.ndarray | pd.Series, n: int, rules: TisRules) -> np.ndarray:
    juv = np.asarray(juvenile)
    if juv.dtype != bool:
        raise TypeError(
            f"juvenile must be a bool or an array of bools (no missing values), got dtype {juv.dtype}"
        )
    if juv.ndim > 0 and juv.shape != (n,):
        raise ValueError(f"juvenile has {juv.shape[0]} values but tis has {n}")
    juv = np.broadcast_to(juv, (n,))
    return np.where(juv[:, None], np.asarray(rules.juvenile_thresholds), np.asarray(rules.adult_thresholds))


def improvement_category(
    tis: pd.Series | np.ndarray,
    juvenile: bool | np.ndarray | pd.Series = False,
    rules: TisRules = DEFAULT_TIS_RULES,
) -> pd.Series:
    """Ordered category none < minimal < moderate < major of each TIS (adult 20/40/60, juvenile DM 30/45/70)."""
    index = tis.index if isinstance(tis, pd.Series) else pd.RangeIndex(len(tis))
    values = np.round(np.asarray(tis, dtype=float), rules.percent_decimals)
    if values.ndim != 1:
        raise ValueError(f"tis must be one-dimensional, got shape {values.shape}")
    with np.errstate(invalid="ignore"):
        bad = (values < 0) | (values > 100)
    if bad.any():
        where = index[bad][:5].tolist()
        raise ValueError(f"total improvement score must lie in 0-100; rows {where} do not [rule: range]")
    thresholds = _threshold_table(juvenile, len(values), rules)
    codes = (values[:, None] >= thresholds).sum(axis=1)
    codes = np.where(np.isnan(values), -1, codes)
    cat = pd.Categorical.from_codes(codes, categories=list(CATEGORIES), ordered=True)
    return pd.Series(cat, index=index, name="improvement_category")


def response_threshold(category: str, juvenile: bool = False, rules: TisRules = DEFAULT_TIS_RULES) -> float:
    """The lowest TIS that reaches a response category ('minimal', 'moderate' or 'major')."""
    thresholds = rules.juvenile_thresholds if juvenile else rules.adult_thresholds
    names = CATEGORIES[1:]
    if category not in names:
        raise ValueError(f"unknown response category {category!r}; expected one of {', '.join(names)}")
    return float(thresholds[names.index(category)])


# ----------------------------------------------------------------------------------------------------------------
# IMACS Definition of Improvement


def imacs_doi(
    baseline: pd.DataFrame, followup: pd.DataFrame, rules: DoiRules = DEFAULT_DOI_RULES
) -> pd.Series:
    """IMACS 2004 Definition of Improvement per row (nullable boolean): >= 20 % better in 3 of 6 core set
    measures, at most 2 worse by >= 25 %, MMT-8 not among them; NA when a measure is missing."""
    b, f = _read_pair(baseline, followup, rules.instruments)
    met, missing = doi_arrays(b, f, rules)
    return pd.Series(pd.arrays.BooleanArray(met, missing), index=baseline.index, name="imacs_doi")


# ----------------------------------------------------------------------------------------------------------------
# Confirmed deterioration (ProDERM)


class DeteriorationRules(Frozen):
    """ProDERM deterioration at one visit; MMT-8 and the 3-of-5 rule use percent of the baseline value
    [unconfirmed: the reference does not say which percent; kept a setting like the enzyme rule]."""

    physician_global_cm: float = Field(2.0, gt=0)
    mmt8_percent: float = Field(20.0, gt=0)
    extramuscular_global_cm: float = Field(2.0, gt=0)
    any_measures: int = Field(3, ge=1, le=5)
    any_percent: float = Field(30.0, gt=0)
    percent_of: Literal["baseline", "range"] = "baseline"
    percent_decimals: int = Field(9, ge=0, le=12)
    instruments: Instruments = Instruments()


DEFAULT_DETERIORATION_RULES = DeteriorationRules()


def _worsening_percent(b: dict, f: dict, measure: str, rules: DeteriorationRules) -> np.ndarray:
    """How much worse (positive = worse) a core set measure is at follow-up, in percent."""
    worse = f[measure] - b[measure] if measure != "mmt8" else b[measure] - f[measure]
    if rules.percent_of == "baseline":
        denominator = b[measure]
    elif measure == "mmt8":
        denominator = b["mmt8_scale"]
    else:
        denominator = np.full_like(worse, rules.instruments.range_of(measure))
    return np.round(_safe_percent(worse, denominator), rules.percent_decimals)


def _kleene(values: np.ndarray, missing: np.ndarray) -> pd.arrays.BooleanArray:
    return pd.arrays.BooleanArray(np.where(missing, False, values), missing)


def deterioration(
    baseline: pd.DataFrame, followup: pd.DataFrame, rules: DeteriorationRules = DEFAULT_DETERIORATION_RULES
) -> pd.Series:
    """Whether a visit meets the ProDERM deterioration criteria against baseline (nullable boolean): physician
    global >= 2 cm worse and MMT-8 >= 20 % worse; or extramuscular global >= 2 cm worse; or 3 of the 5
    non-enzyme core set measures >= 30 % worse. NA only when missing values leave the answer open."""
    inst = rules.instruments
    b, f = _read_pair(baseline, followup, inst)
    dec = rules.percent_decimals
    scale_differs = _mmt8_scale_differs(b, f)
    phys = np.round(f["physician_global"] - b["physician_global"], dec)
    extra = np.round(f["extramuscular_global"] - b["extramuscular_global"], dec)
    mmt = np.where(scale_differs, np.nan, _worsening_percent(b, f, "mmt8", rules))
    phys_worse = _kleene(phys >= rules.physician_global_cm, np.isnan(phys))
    mmt_worse = _kleene(mmt >= rules.mmt8_percent, np.isnan(mmt))
    extra_worse = _kleene(extra >= rules.extramuscular_global_cm, np.isnan(extra))
    pct = np.column_stack(
        [mmt if m == "mmt8" else _worsening_percent(b, f, m, rules) for m in CORE_SET if m != "enzyme"]
    )
    unknown = np.isnan(pct).sum(axis=1)
    count = (pct >= rules.any_percent).sum(axis=1)
    several = _kleene(
        count >= rules.any_measures, (count < rules.any_measures) & (count + unknown >= rules.any_measures)
    )
    met = (phys_worse & mmt_worse) | extra_worse | several
    return pd.Series(met, index=baseline.index, name="deterioration")


def confirmed_deterioration(
    baseline: pd.DataFrame,
    visits: list[pd.DataFrame],
    rules: DeteriorationRules = DEFAULT_DETERIORATION_RULES,
) -> pd.Series:
    """ProDERM confirmed deterioration: the deterioration criteria met at two consecutive visits (each an
    aligned frame, in date order) against the same baseline; Kleene logic keeps undecidable rows NA."""
    if len(visits) < 2:
        raise ValueError(f"confirmed deterioration needs at least two consecutive visits, got {len(visits)}")
    flags = [deterioration(baseline, visit, rules).array for visit in visits]
    confirmed = flags[0] & flags[1]
    for earlier, later in zip(flags[1:], flags[2:], strict=False):
        confirmed = confirmed | (earlier & later)
    return pd.Series(confirmed, index=baseline.index, name="confirmed_deterioration")
