"""Decision points and the option taken, derived from raw history (records have no decision table).

A decision point is a visit with active disease (physician global, CDASI activity or MMT-8 rule) after at least
`stable_days` on an unchanged regimen, at least `min_gap_days` after the previous decision point. The option taken
is read from the regimen changes started within [visit, visit + option_window_days]: starting one drug that an
"add" option names, raising doses (optimise), nothing (continue), or anything else (`other`, counted).
The simulator's truth is never an input: `compare_with_truth` only measures how well this reading recovers it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from features.build import (
    ENZYMES,
    RegimenIndex,
    Track,
    current_drugs,
    decompose,
    dose_mg_of,
    from_days,
    last_change_day,
    measure_tracks,
    rituximab_course_intensity,
    to_days,
)
from features.config import FeatureConfig
from features.vocabulary import OptionCatalog, Vocabulary, body_surface_area

#: measures whose recording makes a date a clinic visit (the IMACS core set without enzymes, and CDASI).
VISIT_MEASURES: tuple[str, ...] = (
    "physician_global", "patient_global", "mmt8", "haq", "extramuscular_global", "cdasi_activity",
)
#: the wide columns of a visit: core set, MMT-8 scale, enzymes with their upper limits, CDASI.
CORE_MEASURES: tuple[str, ...] = ("physician_global", "patient_global", "mmt8", "haq", "extramuscular_global")
OTHER = "other"


def visit_measures() -> tuple[str, ...]:
    """Every measure a visit's wide row reads."""
    return (*CORE_MEASURES, *ENZYMES, "cdasi_activity", "cdasi_damage")


def visit_days(tracks: Mapping[str, Track]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique (patient code, day) of every visit: a date with a core set measure or CDASI recorded."""
    keys = np.unique(np.concatenate([tracks[m].key for m in VISIT_MEASURES if m in tracks] or [np.zeros(0, np.int64)]))
    return decompose(keys)


def visit_values(tracks: Mapping[str, Track], codes: np.ndarray, days: np.ndarray, carry_forward_days: int,
                 not_before: np.ndarray | None = None) -> pd.DataFrame:
    """Wide core set, enzymes (+ upper limits) and CDASI at each (patient, day); a measure missing that day is
    carried forward from at most `carry_forward_days` before (and never from before `not_before`)."""
    since = days - carry_forward_days
    if not_before is not None:
        since = np.maximum(since, not_before)
    out: dict[str, np.ndarray] = {}
    for m in visit_measures():
        t = tracks[m]
        pos = t.latest(codes, days + 1, since)
        out[m] = t.take("value", pos)
        if m == "mmt8":
            out["mmt8_scale"] = t.take("scale", pos)
        if m in ENZYMES:
            out[f"{m}_uln"] = t.take("uln", pos)
    return pd.DataFrame(out)


def visit_table(assessments: pd.DataFrame, carry_forward_days: int = 30) -> pd.DataFrame:
    """One row per visit (`patient_id`, `date`) with its core set, enzymes and CDASI (carried forward ≤ N days)."""
    index = pd.Index(pd.unique(assessments["patient_id"])).astype(str)
    tracks = measure_tracks(assessments, index, visit_measures())
    codes, days = visit_days(tracks)
    values = visit_values(tracks, codes, days, carry_forward_days)
    return pd.concat(
        [pd.DataFrame({"patient_id": index.to_numpy()[codes], "date": from_days(days)}), values], axis=1
    )


def active_disease(visits: pd.DataFrame, config: FeatureConfig) -> pd.Series:
    """Whether each visit meets the activity rule (any criterion met; a missing measure meets none)."""
    rule = config.decisions.activity
    active = np.zeros(len(visits), dtype=bool)
    with np.errstate(invalid="ignore"):
        if rule.physician_global_min_cm is not None:
            active |= visits["physician_global"].to_numpy(float) >= rule.physician_global_min_cm
        if rule.cdasi_activity_min is not None:
            active |= visits["cdasi_activity"].to_numpy(float) >= rule.cdasi_activity_min
        if rule.mmt8_below_percent is not None:
            pct = visits["mmt8"].to_numpy(float) / visits["mmt8_scale"].to_numpy(float) * 100.0
            active |= pct < rule.mmt8_below_percent
    return pd.Series(active, index=visits.index, name="active")


def _first_per_patient_with_gap(codes: np.ndarray, days: np.ndarray, gap: int) -> np.ndarray:
    """Greedy selection of candidate visits at least `gap` days apart per patient, earliest first.

    Vectorised across patients: each round picks every patient's next eligible candidate, so the number of rounds
    is the largest number of decision points of one patient, not the number of patients.
    """
    n = len(codes)
    picked = np.zeros(n, dtype=bool)
    if n == 0:
        return picked
    order = np.lexsort((days, codes))
    c, d = codes[order], days[order]
    uniq, inverse = np.unique(c, return_inverse=True)
    last = np.full(len(uniq), -np.inf)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        ok = alive & (d >= last[inverse] + gap)
        alive &= ok  # a candidate too close to the last pick stays too close to every later pick
        if not ok.any():
            break
        idx = np.flatnonzero(ok)
        first = idx[np.r_[True, c[idx][1:] != c[idx][:-1]]]
        picked[order[first]] = True
        last[inverse[first]] = d[first]
        alive[first] = False
    return picked


def derive_decisions(
    tables: Mapping[str, pd.DataFrame],
    vocabulary: Vocabulary,
    catalog: OptionCatalog,
    config: FeatureConfig | None = None,
    carry_forward_days: int = 30,
    today: pd.Timestamp | str | None = None,
) -> pd.DataFrame:
    """Decision points and the option taken at each, from the normalised contract tables.

    Columns: `decision_id, patient_id, date, as_of` (date + 1 day: the visit's data are known), `option_taken`,
    `option_changes` (what was read from the regimen, for audit), `option_window_complete` (the whole option
    window lies on or before the data's `today`; False means a change may still be unrecorded), and the visit's
    activity measures.
    """
    config = config or FeatureConfig()
    rule = config.decisions
    assessments = tables["assessments"]
    index = pd.Index(pd.unique(assessments["patient_id"])).astype(str)
    tracks = measure_tracks(assessments, index,
                            (*visit_measures(), "weight", "height"))
    codes, days = visit_days(tracks)
    visits = visit_values(tracks, codes, days, carry_forward_days)
    active = active_disease(visits, config).to_numpy()
    # body size known at the visit: weight-based doses before and after the visit compare on the same basis
    weight = tracks["weight"].take("value", tracks["weight"].latest(codes, days + 1))
    bsa = body_surface_area(weight, tracks["height"].take("value", tracks["height"].latest(codes, days + 1)))

    regimens = tables["regimens"]
    reg = RegimenIndex(regimens, index, vocabulary, catalog, config.continuity_gap_days,
                       rule.option_ignore_classes, rule.stability_ignore_classes)
    cut = days + 1 - config.regimen_lag_days  # as_of − lag: changes on the visit day belong to the decision
    # only active visits need the regimen state (keeps the range join small)
    a = np.flatnonzero(active)
    st = reg.state(codes[a], cut[a])
    last = last_change_day(st, cut[a], len(a))
    cur = current_drugs(reg, st)
    treated = np.bincount(cur.loc[~cur["ignored"].to_numpy(), "query"].to_numpy(), minlength=len(a)) > 0
    stable = (cut[a] - last) >= rule.stable_days
    ok = stable & (treated | (not rule.require_treatment))
    cand = a[ok]
    picked = cand[_first_per_patient_with_gap(codes[cand], days[cand], rule.min_gap_days)]
    picked = picked[np.lexsort((days[picked], codes[picked]))]

    option, changes = _option_taken(reg, codes[picked], days[picked], cut[picked], weight[picked], bsa[picked],
                                    catalog, config)
    pid = index.to_numpy()[codes[picked]]
    date = from_days(days[picked])
    out = pd.DataFrame(
        {
            "decision_id": pd.Series(pid, dtype=object) + ":" + pd.Series(date).dt.strftime("%Y-%m-%d"),
            "patient_id": pid,
            "date": date,
            "as_of": from_days(days[picked] + 1),
            "option_taken": option,
            "option_changes": changes,
            "option_window_complete": (
                np.ones(len(picked), dtype=bool) if today is None
                else days[picked] + rule.option_window_days <= to_days(pd.Series([pd.Timestamp(today)]))[0]
            ),
        }
    )
    wide = visits.iloc[picked].reset_index(drop=True)
    for col in ("physician_global", "cdasi_activity", "mmt8", "mmt8_scale"):
        out[f"visit_{col}"] = wide[col].to_numpy()
    return out


def _option_taken(
    reg: RegimenIndex,
    codes: np.ndarray,
    days: np.ndarray,
    cut: np.ndarray,
    weight: np.ndarray,
    bsa: np.ndarray,
    catalog: OptionCatalog,
    config: FeatureConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The configured option each decision's regimen changes amount to, and a text of those changes."""
    rule = config.decisions
    n = len(codes)
    adds: dict[str, str] = {}
    switches: dict[tuple[str, str], str] = {}  # (generic stopped, generic started) -> switch option
    for opt in catalog.options:
        if opt.kind in ("add", "switch"):
            for g in (*opt.eligible_unless_on, opt.adds):
                if g and opt.kind == "add":
                    adds.setdefault(g, opt.name)
                elif g:
                    switches.setdefault((str(opt.stops), g), opt.name)
    optimise = next((o.name for o in catalog.options if o.kind == "optimise"), OTHER)
    st = reg.state(codes, cut)
    cur = current_drugs(reg, st, weight, bsa)
    current_mg = pd.Series(cur["daily_mg"].to_numpy(), index=pd.MultiIndex.from_arrays([cur["query"], cur["generic"]]))

    # starts within [visit, visit + window]
    q, r = reg.started_between(codes, days, days + rule.option_window_days + 1)
    g = reg.generic[r]
    keep = ~reg.ignored[r] & pd.notna(g)
    q, r, g = q[keep], r[keep], g[keep]
    key = pd.MultiIndex.from_arrays([q, g])
    was = current_mg.reindex(key)
    is_current = pd.Series(key.isin(current_mg.index), dtype=bool).to_numpy()
    was_mg = was.to_numpy(float)
    started_rows = pd.DataFrame({"query": q, "row": r, "start": reg.start[r], "last_dose_day": reg.end[r]})
    dose_mg = dose_mg_of(reg, started_rows, weight, bsa)
    new_mg = dose_mg * reg.per_day[r]
    # rituximab: the new course as a whole, however the export splits it (as its current intensity is read)
    rx = reg.is_rituximab[r]
    course_mg = rituximab_course_intensity(reg, started_rows[rx], dose_mg[rx])
    new_mg[rx] = course_mg.reindex(q[rx]).to_numpy(float)
    tol = rule.dose_change_tolerance
    with np.errstate(invalid="ignore"):
        increase = is_current & (new_mg > was_mg * (1 + tol))
        decrease = is_current & (new_mg < was_mg * (1 - tol))
    redose = reg.redose[r]  # same-dose rituximab course while active: continuing, not a change
    increase &= ~redose
    decrease &= ~redose
    started = ~is_current & ~redose
    add_option = pd.Series(g).map(adds).to_numpy(dtype=object)
    kind = np.select(
        [started & pd.notna(add_option), started, increase, decrease],
        ["add", "start_other", "increase", "decrease"],
        default="",
    )
    label = np.select(
        [kind == "add", kind == "start_other", kind == "increase", kind == "decrease"],
        ["start " + g.astype(str), "start " + g.astype(str), "increase " + g.astype(str), "reduce " + g.astype(str)],
        default="",
    )
    # stops: a current drug whose row ends within the window with no row of that drug started in the window
    cq = cur["query"].to_numpy()
    crow = cur["row"].to_numpy()
    cend = reg.end[crow]
    stop = (~cur["ignored"].to_numpy() & (cur["generic"].to_numpy() != "rituximab")
            & (cend >= days[cq]) & (cend <= days[cq] + rule.option_window_days))
    restarted = pd.MultiIndex.from_arrays([cq, cur["generic"].to_numpy()]).isin(pd.MultiIndex.from_arrays([q, g]))
    stop &= ~restarted
    ev = pd.DataFrame(
        {
            "query": np.r_[q, cq[stop]],
            "kind": np.r_[kind, np.full(int(stop.sum()), "stop", dtype=object)],
            "label": np.r_[label, "stop " + cur["generic"].to_numpy()[stop].astype(str)],
            "option": np.r_[add_option, np.full(int(stop.sum()), None, dtype=object)],
            "generic": np.r_[g.astype(object), cur["generic"].to_numpy()[stop].astype(object)],
        }
    )
    ev = ev[ev["kind"].to_numpy() != ""]
    n_add = ev[ev["kind"] == "add"].groupby("query")["option"].nunique().reindex(range(n), fill_value=0).to_numpy()
    first_add = ev[ev["kind"] == "add"].groupby("query")["option"].first().reindex(range(n)).to_numpy(dtype=object)
    n_inc = np.bincount(ev.loc[ev["kind"] == "increase", "query"].to_numpy(), minlength=n)
    other_kinds = ev["kind"].isin(["start_other", "decrease", "stop"]).to_numpy()
    n_other = np.bincount(ev.loc[other_kinds, "query"].to_numpy(), minlength=n)
    option = np.where(
        (n_other > 0) | (n_add > 1), OTHER,
        np.where(n_add == 1, first_add, np.where(n_inc > 0, optimise, catalog.control)),
    ).astype(object)
    if switches:  # one drug stopped and one started (nothing else changed): the switch that names both
        is_stop, is_start = (ev["kind"] == "stop").to_numpy(), ev["kind"].isin(["add", "start_other"]).to_numpy()
        n_stop = np.bincount(ev.loc[is_stop, "query"].to_numpy(), minlength=n)
        n_start = np.bincount(ev.loc[is_start, "query"].to_numpy(), minlength=n)
        n_rest = np.bincount(ev.loc[~is_stop & ~is_start, "query"].to_numpy(), minlength=n)
        stopped = ev[is_stop].groupby("query")["generic"].first().reindex(range(n)).to_numpy(dtype=object)
        begun = ev[is_start].groupby("query")["generic"].first().reindex(range(n)).to_numpy(dtype=object)
        switch = np.asarray([switches.get((str(a), str(b))) for a, b in zip(stopped, begun, strict=True)], dtype=object)
        one_for_one = (n_stop == 1) & (n_start == 1) & (n_rest == 0) & pd.notna(switch)
        option = np.where(one_for_one, switch, option).astype(object)
    ev = ev.sort_values(["query", "label"], kind="stable")
    text = np.full(n, "", dtype=object)
    if len(ev):
        eq = ev["query"].to_numpy()
        starts = np.flatnonzero(np.r_[True, eq[1:] != eq[:-1]])
        joined = np.add.reduceat(("; " + ev["label"].astype(object)).to_numpy(dtype=object), starts)
        text[eq[starts]] = [j[2:] for j in joined]  # one string per decision with a change
    return option, text


def compare_with_truth(derived: pd.DataFrame, truth: pd.DataFrame) -> dict[str, object]:
    """Precision and recall of derived decision points against the simulator's truth (same patient and date),
    and accuracy of the derived option on the matched ones (with a confusion table)."""
    t = truth[["patient_id", "date", "option_taken"]].copy()
    t["patient_id"] = t["patient_id"].astype(str)
    t["date"] = pd.to_datetime(t["date"]).astype("datetime64[ns]")
    d = derived[["patient_id", "date", "option_taken"]].copy()
    d["date"] = pd.to_datetime(d["date"]).astype("datetime64[ns]")
    m = d.merge(t, on=["patient_id", "date"], how="inner", suffixes=("_derived", "_true"))
    matched = len(m)
    same = (m["option_taken_derived"] == m["option_taken_true"]).to_numpy()
    confusion = pd.crosstab(m["option_taken_true"], m["option_taken_derived"])
    return {
        "true_decisions": len(t),
        "derived_decisions": len(d),
        "matched_decisions": matched,
        "precision": matched / len(d) if len(d) else float("nan"),
        "recall": matched / len(t) if len(t) else float("nan"),
        "option_accuracy": float(same.mean()) if matched else float("nan"),
        "option_confusion": {str(k): {str(c): int(v) for c, v in row.items() if v} for k, row in confusion.iterrows()},
    }

