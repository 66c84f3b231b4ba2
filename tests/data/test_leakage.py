"""No leakage, proved by property: any row dated on or after the as-of date can be changed, added or deleted
(regimens: started, or ending, on or after the cut-off as_of − lag) without changing a single feature; and the
order of rows never matters."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.build import build_features
from tests.code.test_features_build import CATALOG, VOCABULARY, normalised

ORIGIN = pd.Timestamp("2024-01-01")
MEASURES = {"physician_global": (0, 10), "patient_global": (0, 10), "mmt8": (0, 80), "haq": (0, 3),
            "extramuscular_global": (0, 10), "cdasi_activity": (0, 100), "cdasi_damage": (0, 32), "ck": (10, 5000),
            "alt": (5, 300), "weight": (40, 120), "height": (150, 190), "neutrophils": (0.2, 12),
            "platelets": (20, 500), "creatinine": (40, 200)}
DRUGS = [("CellCept", 1000, "mg", "oral", "twice daily"), ("IVIG", 1, "g/kg", "intravenous", "every 4 weeks"),
         ("Rituxan", 1000, "mg", "intravenous", "days 1 and 15, every 6 months"),
         ("prednisone", 20, "mg", "oral", "daily"), ("Actemra", 8, "mg/kg", "intravenous", "every 4 weeks"),
         ("Cytoxan", 750, "mg/m2", "intravenous", "every 4 weeks"), ("methotrexate", 15, "mg", "oral", "weekly")]
EVENTS = ["serious_infection", "opportunistic_infection", "cytopenia", "thromboembolism"]
LAG = 1


def date(day: int) -> str:
    return (ORIGIN + pd.Timedelta(days=int(day))).strftime("%Y-%m-%d")


def day_in(lo: int, hi: int, edge: bool) -> st.SearchStrategy[int]:
    """A day in [lo, hi]; with `edge`, `lo` itself half the time — a leak happens at the boundary (a row dated
    on the as-of day), which uniform days over a year would almost never try."""
    return st.one_of(st.just(lo), st.integers(lo, hi)) if edge else st.integers(lo, hi)


@st.composite
def assessment(draw, lo: int, hi: int, edge: bool = False):
    m = draw(st.sampled_from(sorted(MEASURES)))
    a, b = MEASURES[m]
    value = draw(st.floats(a, b, allow_nan=False))
    uln = 200.0 if m == "ck" else (35.0 if m == "alt" else np.nan)
    return ("P1", date(draw(day_in(lo, hi, edge))), m, value, uln)


@st.composite
def regimen(draw, lo: int, hi: int, edge: bool = False):
    drug, dose, unit, route, interval = draw(st.sampled_from(DRUGS))
    start = draw(day_in(lo, hi, edge))
    length = draw(st.one_of(st.none(), st.integers(0, 500)))
    dose = dose * draw(st.sampled_from([0.5, 1.0, 1.5]))
    return ("P1", drug, dose, unit, route, interval, date(start), None if length is None else date(start + length))


@st.composite
def event(draw, lo: int, hi: int, edge: bool = False):
    kind = draw(st.sampled_from(EVENTS))
    grade = draw(st.integers(1, 4)) if kind == "cytopenia" else None
    return ("P1", date(draw(day_in(lo, hi, edge))), kind, grade)


def features(assessments, regimens, events, as_of: int) -> pd.DataFrame:
    t = normalised(list(regimens), list(assessments), list(events))
    keys = pd.DataFrame({"patient_id": ["P1"], "as_of": [ORIGIN + pd.Timedelta(days=as_of)]})
    return build_features(keys, t, VOCABULARY, CATALOG).matrix


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_rows_dated_on_or_after_as_of_never_change_a_feature(data):
    as_of = data.draw(st.integers(400, 900), label="as_of day")
    cut = as_of - LAG
    assessments = data.draw(st.lists(assessment(0, 1200), max_size=25), label="assessments")
    regimens = data.draw(st.lists(regimen(0, 1100), max_size=6), label="regimens")
    events = data.draw(st.lists(event(0, 1200), max_size=5), label="events")
    before = features(assessments, regimens, events, as_of)

    # assessments and events dated on/after as_of: delete some, change the rest, add new ones
    past_a = [a for a in assessments if pd.Timestamp(a[1]) < ORIGIN + pd.Timedelta(days=as_of)]
    future_a = [a for a in assessments if a not in past_a]
    keep_a = [a[:3] + (a[3] * 0.5, a[4]) for a in future_a if data.draw(st.booleans())]
    new_a = data.draw(st.lists(assessment(as_of, as_of + 400, edge=True), max_size=8), label="new assessments")
    past_e = [e for e in events if pd.Timestamp(e[1]) < ORIGIN + pd.Timedelta(days=as_of)]
    new_e = data.draw(st.lists(event(as_of, as_of + 400, edge=True), max_size=4), label="new events")

    # regimens: rows started on/after the cut-off are free; rows running past it may end anywhere at/after it
    cut_date = ORIGIN + pd.Timedelta(days=cut)
    started = [r for r in regimens if pd.Timestamp(r[6]) < cut_date]
    changed = []
    for r in started:
        if r[7] is None or pd.Timestamp(r[7]) >= cut_date:
            end = data.draw(st.one_of(st.none(), st.integers(cut, cut + 400)), label="new end")
            r = r[:7] + (None if end is None else date(end),)
        changed.append(r)
    new_r = data.draw(st.lists(regimen(cut, cut + 300, edge=True), max_size=4), label="new regimens")

    after = features(past_a + keep_a + new_a, changed + new_r, past_e + new_e, as_of)
    pd.testing.assert_frame_equal(before, after)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_row_order_never_matters(data):
    as_of = data.draw(st.integers(400, 900))
    assessments = data.draw(st.lists(assessment(0, 1200), max_size=25))
    regimens = data.draw(st.lists(regimen(0, 1100), max_size=6))
    events = data.draw(st.lists(event(0, 1200), max_size=5))
    before = features(assessments, regimens, events, as_of)
    after = features(data.draw(st.permutations(assessments)), data.draw(st.permutations(regimens)),
                     data.draw(st.permutations(events)), as_of)
    pd.testing.assert_frame_equal(before, after)
