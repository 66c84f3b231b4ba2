"""OMOP CDM v5.4 ↔ the data contract: pure mapping functions over DataFrames and the frozen mapping config.

`import_omop` turns the OMOP tables of one cohort (person, condition_occurrence, drug_exposure, measurement,
observation, death, observation_period, and the vocabulary tables concept_ancestor / drug_strength when present)
into the four contract tables, and counts every record it could not map by table, concept and reason (the import
report) — nothing is dropped silently. `contract_to_omop` is the reverse, used to write the simulated cohort as an
OMOP database. The mapping (which concepts mean what) is `configs/omop.yaml`, read at the edge into `OmopMapping`.
No file or database I/O here: `pipeline/omop.py` reads and writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from features.config import Frozen
from features.contract import parse_dates
from features.vocabulary import repeated

#: the OMOP tables the importer reads, with the columns it needs (the vocabulary tables are optional).
OMOP_COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "gender_concept_id", "year_of_birth", "person_source_value"),
    "observation_period": ("person_id", "observation_period_start_date", "observation_period_end_date"),
    "condition_occurrence": ("person_id", "condition_concept_id", "condition_start_date",
                             "condition_source_value", "condition_source_concept_id"),
    "drug_exposure": ("person_id", "drug_concept_id", "drug_exposure_start_date", "drug_exposure_end_date",
                      "quantity", "days_supply", "sig", "route_concept_id", "route_source_value",
                      "dose_unit_source_value", "drug_source_value", "drug_source_concept_id"),
    "measurement": ("person_id", "measurement_concept_id", "measurement_date", "value_as_number",
                    "value_as_concept_id", "unit_concept_id", "range_high", "measurement_source_value",
                    "measurement_source_concept_id", "unit_source_value", "value_source_value"),
    "observation": ("person_id", "observation_concept_id", "observation_date", "value_as_number",
                    "value_as_string", "value_as_concept_id", "unit_concept_id", "observation_source_value",
                    "observation_source_concept_id", "unit_source_value", "value_source_value"),
    "death": ("person_id", "death_date"),
}
VOCABULARY_COLUMNS: dict[str, tuple[str, ...]] = {
    "concept_ancestor": ("ancestor_concept_id", "descendant_concept_id"),
    "drug_strength": ("drug_concept_id", "ingredient_concept_id", "amount_value", "amount_unit_concept_id",
                      "numerator_value", "numerator_unit_concept_id", "denominator_value"),
    "concept": ("concept_id", "concept_name", "domain_id", "vocabulary_id", "standard_concept", "invalid_reason"),
}
#: one import-report row: records of one table, concept (source value only for concept 0), unit concept (only for
#: the unit reasons) and reason.
REPORT_COLUMNS = ("table", "concept_id", "source_value", "unit_concept_id", "reason", "severity", "records")
CONTRACT_DOSE_UNITS = ("mg", "g", "mg/kg", "g/kg", "mg/m2", "g/m2")
#: milligrams per unit of the mass-unit concepts a drug_strength row may use (UCUM: mg 8576, g 8504, ug 9655).
MASS_UNIT_MG: dict[int, float] = {8576: 1.0, 8504: 1000.0, 9655: 0.001}


class ConceptSet(Frozen):
    """Records meaning one thing: standard concept ids (descendants added when the vocabulary is present),
    source concept ids (local concepts ≥ 2,000,000,000 included) and source values (case-insensitive)."""

    concept_ids: tuple[int, ...] = ()
    source_concept_ids: tuple[int, ...] = ()
    source_values: tuple[str, ...] = ()


class DrugMap(ConceptSet):
    """An ingredient: its concepts → the drug name written into `regimens.drug` (known to configs/drugs.yaml)."""

    drug: str


class DiagnosisMap(ConceptSet):
    diagnosis: str


class MeasureMap(ConceptSet):
    """A measure read from `measurement` and `observation`; `default_unit` is used when a record has none."""

    measure: str
    default_unit: str | None = None


class AntibodyMap(ConceptSet):
    antibody: str


class EventMap(ConceptSet):
    event: str


class ResultValues(Frozen):
    """How a presence test (an antibody) says positive or negative: value concepts or value source text."""

    positive_concept_ids: tuple[int, ...] = ()
    negative_concept_ids: tuple[int, ...] = ()
    positive_values: tuple[str, ...] = ()
    negative_values: tuple[str, ...] = ()


class CancerMap(ConceptSet):
    """Cancer conditions; a patient is cancer-associated when one starts within `window_days` of diagnosis."""

    window_days: int = Field(default=1096, ge=0)


class OmopMapping(Frozen):
    """`configs/omop.yaml`: which OMOP concepts mean what in the data contract (see docs/omop.md)."""

    patient_id: Literal["person_id", "person_source_value"] = "person_id"
    include_descendants: bool = True
    sex: dict[int, Literal["F", "M"]]
    routes: dict[int, Literal["oral", "intravenous", "subcutaneous"]]
    units: dict[int, str]
    drugs: tuple[DrugMap, ...]
    diagnoses: tuple[DiagnosisMap, ...]
    ild: ConceptSet
    cancer: CancerMap
    measures: tuple[MeasureMap, ...]
    antibodies: tuple[AntibodyMap, ...]
    antibody_results: ResultValues
    events: tuple[EventMap, ...]
    death_event: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OmopMapping:
        return cls.model_validate(dict(config))

    @model_validator(mode="after")
    def _unique_targets(self) -> OmopMapping:
        for kind, names in (("drug", [d.drug for d in self.drugs]), ("measure", [m.measure for m in self.measures]),
                            ("antibody", [a.antibody for a in self.antibodies])):
            dup = repeated(names)
            if dup and kind != "drug":
                raise ValueError(f"{kind} listed twice in the mapping: {', '.join(dup)}")
        return self


def mapping_problems(mapping: OmopMapping, vocabulary: Any, measures: Any) -> list[str]:
    """Every mapping target the contract would not accept (a drug, diagnosis, measure, antibody, event or unit
    name), so a misspelt `configs/omop.yaml` is refused before any database is read."""
    problems: list[str] = []
    for d in mapping.drugs:
        if vocabulary.lookup(d.drug) is None:
            problems.append(f"drugs: {d.drug!r} is not a drug known to configs/drugs.yaml")
    for kind, items, attr in (("diagnosis", mapping.diagnoses, "diagnosis"), ("measure", mapping.measures, "measure"),
                              ("antibody", mapping.antibodies, "antibody"), ("event", mapping.events, "event")):
        codes = set(measures.codes(kind))
        for item in items:
            if getattr(item, attr) not in codes:
                problems.append(f"{kind}: {getattr(item, attr)!r} is not a contract {kind} code")
    known_units = set(measures.unit_table()["unit_key"]) | set(CONTRACT_DOSE_UNITS)
    for concept, unit in mapping.units.items():
        if unit.strip().lower() not in {u.lower() for u in known_units}:
            problems.append(f"units: {concept} → {unit!r} is not a unit the contract accepts")
    return problems


# ---------------------------------------------------------------------------------------------------- indexes
def norm_text(s: pd.Series) -> pd.Series:
    """Source values compared case-insensitively, with surrounding and repeated blanks ignored (each distinct
    value normalised once: a column of millions of rows holds few distinct codes)."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    norm = np.array([" ".join(str(u).lower().split()) for u in uniques] + [None], dtype=object)
    return pd.Series(norm[codes], index=s.index, dtype="object")


@dataclass(frozen=True)
class ConceptIndex:
    """Lookup tables of one kind of target (drug, measure, ...): concept id → target, source text → target.

    Explicit ids win over ids reached through `concept_ancestor`, and earlier entries over later ones."""

    by_concept: dict[int, str]
    by_source_concept: dict[int, str]
    by_source_value: dict[str, str]

    def names(self) -> list[str]:
        """Every target, sorted: `codes` numbers them in this order."""
        return sorted({*self.by_concept.values(), *self.by_source_concept.values(), *self.by_source_value.values()})

    def codes(self, concept: pd.Series, source_concept: pd.Series | None,
              source_value: pd.Series | None) -> np.ndarray:
        """The position in `names()` of each record's target (-1 where none): by standard concept, else source
        concept, else source value. Each distinct id or text is looked up once (millions of rows, few codes)."""
        pos = {n: i for i, n in enumerate(self.names())}
        out = _map_codes(_numbers(concept), lambda u: pos.get(self.by_concept.get(int(u)), -1))
        todo = out < 0
        if source_concept is not None and self.by_source_concept and todo.any():
            table = self.by_source_concept
            out = np.where(todo, _map_codes(_numbers(source_concept), lambda u: pos.get(table.get(int(u)), -1)), out)
            todo = out < 0
        if source_value is not None and self.by_source_value and todo.any():
            text = self.by_source_value
            out = np.where(todo, _map_codes(source_value, lambda u: pos.get(text.get(" ".join(str(u).lower().split())),
                                                                          -1)), out)
        return out

    def match(self, concept: pd.Series, source_concept: pd.Series | None, source_value: pd.Series | None) -> pd.Series:
        """The target of each record (None where none), as `codes` finds it."""
        names = np.array([*self.names(), None], dtype=object)
        return pd.Series(names[self.codes(concept, source_concept, source_value)], index=concept.index, dtype="object")


def _numbers(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _map_codes(values: pd.Series | np.ndarray, func: Any) -> np.ndarray:
    """`func(value)` (an int, -1 for none) for each value, -1 for a missing one; once per distinct value."""
    codes, uniques = pd.factorize(values)
    mapped = np.array([*(func(u) for u in uniques), -1], dtype=np.int32)
    return mapped[codes]


def _map_unique(values: pd.Series | np.ndarray, func: Any) -> np.ndarray:
    """`func(value)` for each value (None for a missing one), computed once per distinct value."""
    codes, uniques = pd.factorize(values)
    mapped = np.array([*(func(u) for u in uniques), None], dtype=object)
    return mapped[codes]


def integer_ids(s: pd.Series) -> pd.Series:
    """Ids (person, concept) → Int64; NA where empty or not a whole number ('P2', 3.5, inf), never truncated
    to another id."""
    x = pd.to_numeric(s, errors="coerce")
    if pd.api.types.is_float_dtype(x.dtype):
        v = x.to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(v) & (np.floor(v) == v) & (np.abs(v) < 2.0**63)
        x = pd.Series(np.where(whole, v, np.nan), index=s.index)
    return x.astype("Int64")


def descendants(concept_ancestor: pd.DataFrame | None, ids: Iterable[int]) -> dict[int, list[int]]:
    """Ancestor id → its descendant ids (itself first) from `concept_ancestor`; just itself without the table."""
    ids = list(dict.fromkeys(int(i) for i in ids))
    out: dict[int, list[int]] = {i: [i] for i in ids}
    if concept_ancestor is None or concept_ancestor.empty or not ids:
        return out
    ca = pd.DataFrame({"anc": integer_ids(concept_ancestor["ancestor_concept_id"]),
                       "desc": integer_ids(concept_ancestor["descendant_concept_id"])}).dropna()
    for anc, desc in ca.loc[ca["anc"].isin(ids)].groupby("anc")["desc"]:  # ids as the importer reads them
        out[int(anc)] = [int(anc), *(int(d) for d in desc if int(d) != int(anc))]
    return out


def build_index(items: Iterable[tuple[str, ConceptSet]], concept_ancestor: pd.DataFrame | None,
                include_descendants: bool) -> ConceptIndex:
    """The lookup tables of (target, concept set) pairs, in priority order."""
    items = list(items)
    by_concept: dict[int, str] = {}
    for target, cs in items:  # explicit ids first, so a descendant never overrides an id named in the mapping
        for cid in cs.concept_ids:
            by_concept.setdefault(int(cid), target)
    if include_descendants:
        tree = descendants(concept_ancestor, [c for _, cs in items for c in cs.concept_ids])
        for target, cs in items:
            for cid in cs.concept_ids:
                for d in tree.get(int(cid), []):
                    by_concept.setdefault(d, target)
    by_source_concept: dict[int, str] = {}
    by_value: dict[str, str] = {}
    for target, cs in items:
        for cid in (*cs.source_concept_ids, *cs.concept_ids):
            by_source_concept.setdefault(int(cid), target)
        for v in cs.source_values:
            by_value.setdefault(" ".join(str(v).strip().lower().split()), target)
    return ConceptIndex(by_concept, by_source_concept, by_value)


def mapped_concepts(mapping: OmopMapping, concept: pd.DataFrame | None) -> pd.DataFrame:
    """Every concept id the mapping names, with what it maps to and its name, domain, vocabulary and standard flag
    in the source's own `concept` table (empty where the table lacks it), so a site can check the ids by name."""
    rows = []
    for kind, items, attr in (("drug", mapping.drugs, "drug"), ("diagnosis", mapping.diagnoses, "diagnosis"),
                              ("measure", mapping.measures, "measure"), ("antibody", mapping.antibodies, "antibody"),
                              ("event", mapping.events, "event")):
        for item in items:
            rows += [(kind, getattr(item, attr), int(c)) for c in (*item.concept_ids, *item.source_concept_ids)]
    rows += [("condition", "ild", int(c)) for c in mapping.ild.concept_ids]
    rows += [("condition", "cancer", int(c)) for c in mapping.cancer.concept_ids]
    out = pd.DataFrame(rows, columns=["kind", "target", "concept_id"])
    names = (concept.rename(columns=str.lower).drop_duplicates("concept_id")
             .assign(concept_id=lambda f: integer_ids(f["concept_id"]).astype("float"))
             if concept is not None and len(concept) else None)
    extra = ["concept_name", "domain_id", "vocabulary_id", "standard_concept", "invalid_reason"]
    if names is None:
        return out.assign(**{c: None for c in extra})
    merged = out.assign(concept_id=out["concept_id"].astype(float)).merge(names[["concept_id", *extra]],
                                                                          on="concept_id", how="left")
    merged["concept_id"] = merged["concept_id"].astype("int64")
    return merged.astype(object).where(merged.notna(), None)


# ----------------------------------------------------------------------------------------------------- report
def _count(records: pd.DataFrame, table: str, reason: str, severity: str, concept_col: str | None,
           source_col: str | None, unit_col: str | None = None) -> pd.DataFrame:
    """Report rows: records of `table` grouped by concept id (0 for a table without one: death,
    observation_period) and source value where the concept is 0/missing, and by unit concept (0 for none) when
    `unit_col` names it (the unit reasons)."""
    if records.empty:
        return pd.DataFrame(columns=list(REPORT_COLUMNS))
    concept = (integer_ids(records[concept_col]).fillna(0) if concept_col is not None
               else pd.Series(0, index=records.index, dtype="Int64"))
    if source_col is not None and source_col in records:
        src = records[source_col].astype("string").str.slice(0, 50).where(concept == 0, pd.NA)
    else:
        src = pd.Series(pd.NA, index=records.index, dtype="string")
    unit = integer_ids(records[unit_col]).fillna(0) if unit_col is not None else pd.Series(-1, index=records.index)
    g = (pd.DataFrame({"concept_id": concept, "source_value": src.fillna(""), "unit_concept_id": unit})
         .groupby(["concept_id", "source_value", "unit_concept_id"], sort=True).size().rename("records")
         .reset_index())
    g.insert(0, "table", table)
    g["reason"] = reason
    g["severity"] = severity
    g["source_value"] = g["source_value"].replace("", pd.NA)
    g["unit_concept_id"] = g["unit_concept_id"].astype("Int64").where(g["unit_concept_id"] >= 0, pd.NA)
    return g[list(REPORT_COLUMNS)]


# ----------------------------------------------------------------------------------------------------- import
@dataclass(frozen=True)
class ImportResult:
    """The four contract tables (raw, as `escalate validate` reads them) and the import report."""

    tables: dict[str, pd.DataFrame]
    report: pd.DataFrame
    persons_total: int
    persons_imported: int


def _table(omop: Mapping[str, pd.DataFrame | None], name: str) -> pd.DataFrame:
    """An OMOP table with the columns the importer needs (missing optional columns as empty)."""
    frame = omop.get(name)
    columns = OMOP_COLUMNS.get(name) or VOCABULARY_COLUMNS[name]
    if frame is None:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    frame = frame.rename(columns=str.lower)
    for c in columns:
        if c not in frame:
            frame = frame.assign(**{c: pd.Series(pd.NA, index=frame.index, dtype="object")})
    return frame


def import_omop(omop: Mapping[str, pd.DataFrame | None], mapping: OmopMapping, gap_days: int) -> ImportResult:
    """OMOP tables → the four contract tables and the import report (see the module docstring).

    The cohort is every person with a condition in one of the mapping's diagnoses; records of other persons
    are not read further. `gap_days`: exposures of one drug at one dose, route and schedule less than this many
    days apart are merged into one continuous regimen."""
    ancestor = omop.get("concept_ancestor")
    desc = mapping.include_descendants
    person = _table(omop, "person")
    cond = _table(omop, "condition_occurrence")
    reports: list[pd.DataFrame] = []

    diag_index = build_index([(d.diagnosis, d) for d in mapping.diagnoses], ancestor, desc)
    cond = cond.assign(diagnosis=diag_index.match(cond["condition_concept_id"], cond["condition_source_concept_id"],
                                                  cond["condition_source_value"]),
                       date=parse_dates(cond["condition_start_date"]))
    cond_pid = integer_ids(cond["person_id"])
    diagnosed = cond["diagnosis"].notna().to_numpy()
    cohort_ids = pd.Index(cond_pid[diagnosed].dropna().unique())
    no_id = diagnosed & cond_pid.isna().to_numpy()
    if no_id.any():  # CDM person ids are integers: a diagnosis of 'P2' names no person that can be imported
        reports.append(_count(cond.loc[no_id], "condition_occurrence", "non_integer_person_id", "error",
                              "condition_concept_id", "condition_source_value"))
    person = person.assign(pid=integer_ids(person["person_id"]))
    in_cohort = person["pid"].isin(cohort_ids)
    person = person.loc[in_cohort].copy()
    absent = diagnosed & ~no_id & ~cond_pid.isin(person["pid"]).to_numpy(dtype=bool, na_value=False)
    if absent.any():  # a diagnosed person missing from `person` cannot be imported: said, not dropped
        reports.append(_count(cond.loc[absent], "condition_occurrence", "person_not_in_person_table", "error",
                              "condition_concept_id", "condition_source_value"))
    twice = person["pid"].duplicated(keep=False)
    if twice.any():  # two person rows of one id: which sex and birth year hold cannot be told, so neither is used
        reports.append(_count(person.loc[twice], "person", "duplicate_person_id", "error", "gender_concept_id",
                              None))
        person = person.loc[~twice]
    cohort_ids = pd.Index(person["pid"].to_numpy())
    patient_id = (person["pid"].astype("string") if mapping.patient_id == "person_id"
                  else person["person_source_value"].astype("string"))
    ids = pd.Series(patient_id.to_numpy(), index=person["pid"].to_numpy())
    if ids.isna().any():
        reports.append(_count(person.loc[ids.isna().to_numpy()], "person", "no_patient_id", "error",
                              "gender_concept_id", None))

    meas = _cohort(_table(omop, "measurement"), cohort_ids)
    obs = _cohort(_table(omop, "observation"), cohort_ids)
    patients, rep = _patients(person, cond, meas, mapping, ancestor, ids)
    reports.append(rep)
    periods = _cohort(_table(omop, "observation_period"), cohort_ids)
    periods = periods.assign(end=parse_dates(periods["observation_period_end_date"]))
    if periods["end"].isna().any():  # cannot tell whether a regimen runs at its end: said, not passed over
        reports.append(_count(periods.loc[periods["end"].isna()], "observation_period", "unreadable_date", "error",
                              None, None))
    obs_end = periods.groupby("pid")["end"].max()
    unobserved = ~person["pid"].isin(periods["pid"]).to_numpy(dtype=bool)
    if unobserved.any():  # CDM v5.4 gives every person one: without it no regimen can be told to be ongoing
        reports.append(_count(person.loc[unobserved], "person", "no_observation_period", "warning", None, None))
    regimens, rep = _regimens(_cohort(_table(omop, "drug_exposure"), cohort_ids), omop, mapping, ancestor, ids,
                              obs_end, gap_days)
    reports.append(rep)
    assessments, rep = _assessments(meas, obs, mapping, ancestor, ids)
    reports.append(rep)
    events, rep = _events(obs, _cohort(_table(omop, "death"), cohort_ids), mapping, ancestor, ids)
    reports.append(rep)
    report = pd.concat([r for r in reports if not r.empty], ignore_index=True) if any(
        not r.empty for r in reports) else pd.DataFrame(columns=list(REPORT_COLUMNS))
    report = report.groupby(["table", "concept_id", "source_value", "unit_concept_id", "reason", "severity"],
                            dropna=False, sort=True)["records"].sum().reset_index()
    report["concept_id"] = report["concept_id"].astype("int64")
    report["unit_concept_id"] = report["unit_concept_id"].astype("Int64")
    report["records"] = report["records"].astype("int64")
    total = int(omop["person"].shape[0]) if omop.get("person") is not None else 0
    return ImportResult({"patients": patients, "regimens": regimens, "assessments": assessments, "events": events},
                        report[list(REPORT_COLUMNS)], total, int(len(patients)))


def _cohort(frame: pd.DataFrame, cohort_ids: pd.Index) -> pd.DataFrame:
    """The rows of the cohort's persons, with their person id as an integer column `pid`."""
    pid = integer_ids(frame["person_id"])
    inside = pid.isin(cohort_ids).to_numpy(dtype=bool, na_value=False)
    if inside.all():  # the pipeline reads only the cohort: no copy
        return frame.assign(pid=pid)
    return frame.loc[inside].assign(pid=pid[inside])


def _patients(person: pd.DataFrame, cond: pd.DataFrame, meas: pd.DataFrame,
              mapping: OmopMapping, ancestor: pd.DataFrame | None, ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One contract `patients` row per cohort person."""
    reports = []
    order = {d.diagnosis: i for i, d in enumerate(mapping.diagnoses)}
    # the cohort's diagnoses: one of a person not imported is reported once, by the reason it was not
    dx = cond.assign(pid=integer_ids(cond["person_id"]))
    dx = dx.loc[dx["diagnosis"].notna() & dx["pid"].isin(person["pid"])]
    dx = dx.assign(rank=dx["diagnosis"].map(order))
    bad_dates = dx["date"].isna()
    if bad_dates.any():
        reports.append(_count(dx.loc[bad_dates], "condition_occurrence", "unreadable_date", "error",
                              "condition_concept_id", "condition_source_value"))
    dx = dx.loc[~bad_dates].sort_values(["pid", "rank", "date"])
    first = dx.drop_duplicates("pid").set_index("pid")
    pid = person["pid"]
    sex = integer_ids(person["gender_concept_id"]).map(mapping.sex)
    unknown_sex = sex.isna()
    if unknown_sex.any():
        reports.append(_count(person.loc[unknown_sex], "person", "unmapped_gender", "error", "gender_concept_id",
                              None))
    birth_year = integer_ids(person["year_of_birth"])
    if birth_year.isna().any():  # imported empty (the contract rejects the patient): said here, at its source
        reports.append(_count(person.loc[birth_year.isna()], "person", "unreadable_birth_year", "error", None, None))

    cohort_cond = cond.assign(pid=integer_ids(cond["person_id"]))
    cohort_cond = cohort_cond.loc[cohort_cond["pid"].isin(pid)]
    ild_idx = build_index([("ild", mapping.ild)], ancestor, mapping.include_descendants)
    cancer_idx = build_index([("cancer", mapping.cancer)], ancestor, mapping.include_descendants)
    args = (cohort_cond["condition_concept_id"], cohort_cond["condition_source_concept_id"],
            cohort_cond["condition_source_value"])
    is_ild = ild_idx.match(*args).notna()
    is_cancer = cancer_idx.match(*args).notna()
    ild_pids = set(cohort_cond.loc[is_ild, "pid"])  # an undated fact: any ILD record, its date not needed
    undated_cancer = is_cancer & cohort_cond["date"].isna() & cohort_cond["diagnosis"].isna()
    if undated_cancer.any():  # cannot tell whether it falls in the window: said, not dropped
        reports.append(_count(cohort_cond.loc[undated_cancer], "condition_occurrence", "unreadable_date", "error",
                              "condition_concept_id", "condition_source_value"))
    cancer = cohort_cond.loc[is_cancer, ["pid", "date"]].assign(
        dx_date=lambda f: first["date"].reindex(f["pid"].to_numpy()).to_numpy())  # NaT where no readable diagnosis
    window = pd.Timedelta(days=mapping.cancer.window_days)
    cam = set(cancer.loc[(cancer["date"] - cancer["dx_date"]).abs() <= window, "pid"])
    other = cohort_cond.loc[cohort_cond["diagnosis"].isna() & ~is_ild & ~is_cancer]
    if not other.empty:
        reports.append(_count(other, "condition_occurrence", "unmapped_concept", "info", "condition_concept_id",
                              "condition_source_value"))
    patients = pd.DataFrame({
        "patient_id": ids.reindex(pid.to_numpy()).to_numpy(),
        "sex": sex.to_numpy(),
        "birth_year": birth_year.to_numpy(),
        "diagnosis": first["diagnosis"].reindex(pid.to_numpy()).to_numpy(),
        "diagnosis_date": first["date"].reindex(pid.to_numpy()).to_numpy(),
        "antibodies": pd.Series(pd.NA, index=range(len(pid)), dtype="object").to_numpy(),
        "ild": pid.isin(ild_pids).to_numpy(),
        "cancer_associated": pid.isin(cam).to_numpy(),
    })
    antibodies, rep = _antibodies(meas, mapping, ancestor)
    reports.append(rep)
    patients["antibodies"] = pd.Series(pid.map(antibodies).to_numpy(), dtype="object")
    patients = patients.sort_values("patient_id", kind="stable").reset_index(drop=True)
    return patients, _concat(reports)


def _concat(reports: list[pd.DataFrame]) -> pd.DataFrame:
    reports = [r for r in reports if r is not None and not r.empty]
    return pd.concat(reports, ignore_index=True) if reports else pd.DataFrame(columns=list(REPORT_COLUMNS))


def _antibodies(meas: pd.DataFrame, mapping: OmopMapping,
                ancestor: pd.DataFrame | None) -> tuple[pd.Series, pd.DataFrame]:
    """pid → the contract `antibodies` cell: the positive antibodies joined by ';', `negative` when every test
    was negative, NA when none was tested. A result neither positive nor negative is reported, not guessed."""
    idx = build_index([(a.antibody, a) for a in mapping.antibodies], ancestor, mapping.include_descendants)
    ab = idx.match(meas["measurement_concept_id"], meas["measurement_source_concept_id"],
                   meas["measurement_source_value"])
    tests = meas.loc[ab.notna()].assign(antibody=ab[ab.notna()])
    res = mapping.antibody_results
    vc = integer_ids(tests["value_as_concept_id"])
    text = norm_text(tests["value_source_value"])
    pos_text = {" ".join(v.lower().split()) for v in res.positive_values}
    neg_text = {" ".join(v.lower().split()) for v in res.negative_values}
    positive = vc.isin(res.positive_concept_ids).fillna(False) | text.isin(pos_text).fillna(False)
    negative = vc.isin(res.negative_concept_ids).fillna(False) | text.isin(neg_text).fillna(False)
    unclear = ~(positive | negative)
    report = _count(tests.loc[unclear.to_numpy()], "measurement", "unreadable_antibody_result", "warning",
                    "measurement_concept_id", "measurement_source_value")
    tests = tests.assign(positive=positive.to_numpy(), known=(~unclear).to_numpy())
    order = {a.antibody: i for i, a in enumerate(mapping.antibodies)}
    pos = (tests.loc[tests["positive"]].assign(o=lambda f: f["antibody"].map(order)).sort_values(["pid", "o"])
           .drop_duplicates(["pid", "antibody"]).groupby("pid")["antibody"].agg(";".join))
    tested = set(tests.loc[tests["known"], "pid"])
    out = pd.Series({p: "negative" for p in tested if p not in pos.index}, dtype="object")
    return pd.concat([pos.astype("object"), out]), report


def _regimens(drug: pd.DataFrame, omop: Mapping[str, pd.DataFrame | None], mapping: OmopMapping,
              ancestor: pd.DataFrame | None, ids: pd.Series, obs_end: pd.Series,
              gap_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """drug_exposure → contract `regimens`: mapped to an ingredient, dosed, merged into continuous regimens."""
    reports = []
    idx = build_index([(d.drug, d) for d in mapping.drugs], ancestor, mapping.include_descendants)
    name = idx.match(drug["drug_concept_id"], drug["drug_source_concept_id"], drug["drug_source_value"])
    unmapped = drug.loc[name.isna().to_numpy()]
    reports.append(_count(unmapped, "drug_exposure", "unmapped_concept", "info", "drug_concept_id",
                          "drug_source_value"))
    d = drug.loc[name.notna().to_numpy()].assign(drug=name[name.notna()].to_numpy())
    d = d.assign(start=parse_dates(d["drug_exposure_start_date"]), end=parse_dates(d["drug_exposure_end_date"]))
    no_start = d["start"].isna()
    if no_start.any():
        reports.append(_count(d.loc[no_start], "drug_exposure", "unreadable_date", "error", "drug_concept_id",
                              "drug_source_value"))
        d = d.loc[~no_start]
    # an end date is required in CDM v5.4; without one the exposure lasts its days_supply, else it is read as
    # ending on its start day — counted either way, so a one-day regimen is never a silent guess
    written = d["drug_exposure_end_date"].notna() & d["end"].isna()
    if written.any():
        reports.append(_count(d.loc[written.to_numpy()], "drug_exposure", "unreadable_end_date", "warning",
                              "drug_concept_id", "drug_source_value"))
    supplied = pd.to_numeric(d["days_supply"], errors="coerce")
    by_supply = d["end"].isna() & (supplied > 0) & (supplied <= 36_500)  # a century at most: no overflow
    d = d.assign(end=d["end"].where(~by_supply, d["start"] + pd.to_timedelta((supplied - 1).where(by_supply),
                                                                              unit="D")))
    if d["end"].isna().any():
        reports.append(_count(d.loc[d["end"].isna().to_numpy()], "drug_exposure", "no_end_date", "warning",
                              "drug_concept_id", "drug_source_value"))
        d = d.assign(end=d["end"].fillna(d["start"]))  # ends on its start day, a single dose ('once') included
    period_end = pd.Series(pd.to_datetime(obs_end.reindex(d["pid"].to_numpy()).to_numpy()), index=d.index)
    after = (d["start"] > period_end).fillna(False)
    if after.any():  # recorded after the person's last observation period: imported as recorded, and said
        reports.append(_count(d.loc[after.to_numpy()], "drug_exposure", "after_observation_period", "warning",
                              "drug_concept_id", "drug_source_value"))
    quantity = pd.to_numeric(d["quantity"], errors="coerce")
    negative = quantity < 0
    if negative.any():
        reports.append(_count(d.loc[negative.to_numpy()], "drug_exposure", "negative_quantity", "warning",
                              "drug_concept_id", "drug_source_value"))
    quantity = quantity.where(quantity > 0)
    supply = pd.to_numeric(d["days_supply"], errors="coerce")
    bad_supply = supply <= 0
    if bad_supply.any():
        reports.append(_count(d.loc[bad_supply.to_numpy()], "drug_exposure", "nonpositive_days_supply", "warning",
                              "drug_concept_id", "drug_source_value"))
    supply = supply.where(supply > 0)
    order = d["end"] < d["start"]
    if order.any():
        reports.append(_count(d.loc[order.to_numpy()], "drug_exposure", "end_before_start", "warning",
                              "drug_concept_id", "drug_source_value"))
    unit_text = d["dose_unit_source_value"].astype("string").str.strip().str.lower().str.replace("²", "2")
    per_admin = unit_text.isin(CONTRACT_DOSE_UNITS).fillna(False) & quantity.notna()
    sig = d["sig"].astype("string").str.strip()
    dose = quantity.where(per_admin)
    dose_unit = unit_text.where(per_admin)
    interval = sig.where(per_admin & sig.notna() & (sig != ""))
    # drug_strength: quantity × strength = the amount dispensed; over days_supply (else the exposure's days)
    strength = omop.get("drug_strength")
    if strength is not None and not strength.empty:
        ingredient_of = {}
        for dm in mapping.drugs:
            for cid in dm.concept_ids:
                ingredient_of.setdefault(dm.drug, int(cid))
        s = strength.rename(columns=str.lower)
        s = s.assign(mg=pd.to_numeric(s["amount_value"], errors="coerce")
                     * integer_ids(s["amount_unit_concept_id"]).map(MASS_UNIT_MG).astype(float))
        s = s.assign(mg=s["mg"].fillna(pd.to_numeric(s["numerator_value"], errors="coerce")
                                       * integer_ids(s["numerator_unit_concept_id"]).map(MASS_UNIT_MG).astype(float)))
        s = s.dropna(subset=["mg"]).assign(key=lambda f: list(zip(integer_ids(f["drug_concept_id"]),
                                                                   integer_ids(f["ingredient_concept_id"]),
                                                                   strict=True)))
        mg_of = dict(zip(s["key"], s["mg"], strict=True))
        keys = list(zip(integer_ids(d["drug_concept_id"]), d["drug"].map(ingredient_of), strict=True))
        mg_unit = pd.Series([mg_of.get(k, np.nan) for k in keys], index=d.index, dtype=float)
        days = supply.fillna(((d["end"] - d["start"]).dt.days + 1).where(d["end"] > d["start"]))
        amount = quantity * mg_unit
        daily = amount / days
        use = dose.isna() & daily.notna()
        dose = dose.where(~use, daily.round(6))
        dose_unit = dose_unit.where(~use, "mg")
        interval = interval.where(~use, "daily")
        single = dose.isna() & amount.notna() & (d["end"] <= d["start"])
        dose = dose.where(~single, amount)
        dose_unit = dose_unit.where(~single, "mg")
        interval = interval.where(~single, "once")
    no_dose = dose.isna()
    if no_dose.any():
        reports.append(_count(d.loc[no_dose.to_numpy()], "drug_exposure", "no_dose", "warning", "drug_concept_id",
                              "drug_source_value"))
    no_interval = dose.notna() & interval.isna()
    if no_interval.any():
        reports.append(_count(d.loc[no_interval.to_numpy()], "drug_exposure", "no_schedule", "warning",
                              "drug_concept_id", "drug_source_value"))
    route = integer_ids(d["route_concept_id"]).map(mapping.routes).astype("object")
    route = route.where(route.notna(), d["route_source_value"].astype("string").str.strip())
    if route.isna().any():
        reports.append(_count(d.loc[route.isna().to_numpy()], "drug_exposure", "no_route", "warning",
                              "route_concept_id", None))
    rows = pd.DataFrame({
        "pid": d["pid"].to_numpy(), "drug": d["drug"].to_numpy(), "dose": dose.to_numpy(dtype=float),
        "dose_unit": dose_unit.astype("object").to_numpy(), "route": route.to_numpy(),
        "interval": interval.astype("object").to_numpy(), "start_date": d["start"].to_numpy(),
        "end_date": d["end"].to_numpy(), "order_ok": (~order).to_numpy(),
    })
    regimens = merge_exposures(rows, gap_days)
    # a regimen running at the end of the observation period (started by then, ending on or after it) is
    # ongoing; any other keeps its end as recorded — one recorded after the period (reported above) included
    ends = pd.Series(pd.to_datetime(obs_end.reindex(regimens["pid"].to_numpy()).to_numpy()), index=regimens.index)
    running = (regimens["start_date"] <= ends) & (regimens["end_date"] >= ends)
    regimens.loc[running.fillna(False), "end_date"] = pd.NaT
    regimens.insert(0, "patient_id", regimens["pid"].map(ids).astype("string"))
    regimens = regimens.drop(columns="pid").sort_values(["patient_id", "start_date", "drug"], kind="stable")
    return regimens.reset_index(drop=True), _concat(reports)


def merge_exposures(rows: pd.DataFrame, gap_days: int) -> pd.DataFrame:
    """Exposures of one drug and route, taken in order of their start: a run of rows at one dose, unit and
    schedule becomes one regimen (earliest start, latest end) where each row overlaps or starts less than
    `gap_days` after the run so far ended; another dose (or a single administration) between them starts a new
    regimen, so every row is in one. A new dose ends the previous regimen of that drug and route the day before
    it starts. Single administrations ('once') and rows whose end is before their start are kept as they are (the
    contract reports the latter); a missing end is the start day."""
    cols = ["pid", "drug", "dose", "dose_unit", "route", "interval", "start_date", "end_date"]
    if rows.empty:
        return pd.DataFrame({c: rows[c] for c in cols})
    alone = (~rows["order_ok"].astype(bool) | rows["interval"].astype("string").str.lower().eq("once").fillna(False))
    r = rows[cols].assign(end_date=rows["end_date"].fillna(rows["start_date"]), _alone=alone.to_numpy())
    group = ["pid", "drug", "route"]
    key = [*group, "dose_unit", "interval", "dose"]
    text = r[key].astype("string").fillna("\x00")
    r = r.assign(_g=pd.util.hash_pandas_object(text[group], index=False).to_numpy(),
                 _k=pd.util.hash_pandas_object(text, index=False).to_numpy())
    r = r.sort_values(["_g", "start_date", "end_date", "_k"], kind="stable")
    # a run: consecutive rows (by start) of one drug and route at one dose; a single administration is its own
    k, single = r["_k"].to_numpy(), r["_alone"].to_numpy()
    run = pd.Series(np.cumsum(np.r_[True, k[1:] != k[:-1]] | single | np.r_[True, single[:-1]]), index=r.index)
    prev_end = r["end_date"].groupby(run).cummax().groupby(run).shift()
    block = (prev_end.isna() | (r["start_date"] > prev_end + pd.Timedelta(days=gap_days))).cumsum()
    out = r.groupby(block, sort=False).agg(**{c: (c, "first") for c in key}, start_date=("start_date", "min"),
                                           end_date=("end_date", "max"))[cols]
    out = out.sort_values(["pid", "drug", "route", "start_date", "end_date"], kind="stable").reset_index(drop=True)
    same = (out["pid"].eq(out["pid"].shift(-1)) & out["drug"].eq(out["drug"].shift(-1))
            & out["route"].astype("string").eq(out["route"].astype("string").shift(-1)).fillna(False))
    nxt = out["start_date"].shift(-1)
    overlap = same & (out["end_date"] >= nxt) & (nxt > out["start_date"])
    out.loc[overlap, "end_date"] = nxt[overlap] - pd.Timedelta(days=1)
    return out


def _assessments(meas: pd.DataFrame, obs: pd.DataFrame, mapping: OmopMapping, ancestor: pd.DataFrame | None,
                 ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """measurement + observation → contract `assessments` (long), units from unit concepts, ULN from range_high."""
    reports = []
    idx = build_index([(m.measure, m) for m in mapping.measures], ancestor, mapping.include_descendants)
    ab_idx = build_index([(a.antibody, a) for a in mapping.antibodies], ancestor, mapping.include_descendants)
    ev_idx = build_index([(e.event, e) for e in mapping.events], ancestor, mapping.include_descendants)
    default_unit = {m.measure: m.default_unit for m in mapping.measures}
    measure_names = idx.names()
    unit_names: list[str] = []
    unit_pos: dict[str, int] = {}

    def unit_code(name: str | None) -> int:
        if name is None:
            return -1
        if name not in unit_pos:
            unit_pos[name] = len(unit_names)
            unit_names.append(name)
        return unit_pos[name]

    default_code = np.array([*(unit_code(default_unit.get(m)) for m in measure_names), -1], dtype=np.int32)
    frames = []
    for table, prefix in (("measurement", "measurement"), ("observation", "observation")):
        f = meas if table == "measurement" else obs
        args = (f[f"{prefix}_concept_id"], f[f"{prefix}_source_concept_id"], f[f"{prefix}_source_value"])
        measure = idx.codes(*args)
        other = (ab_idx if table == "measurement" else ev_idx).codes(*args) >= 0
        mapped = measure >= 0
        if (~mapped & ~other).any():
            reports.append(_count(f.loc[~mapped & ~other], table, "unmapped_concept", "info",
                                  f"{prefix}_concept_id", f"{prefix}_source_value"))
        value = _numbers(f["value_as_number"])
        date = parse_dates(f[f"{prefix}_date"]).to_numpy()
        unreadable = mapped & pd.isna(date) & f[f"{prefix}_date"].notna().to_numpy()
        if unreadable.any():  # a blank cell is no date, not an unreadable one
            written = f[f"{prefix}_date"].to_numpy()[unreadable]
            unreadable[unreadable] = [str(v).strip() != "" for v in written]
        if unreadable.any():
            reports.append(_count(f.loc[unreadable], table, "unreadable_date", "error",
                                  f"{prefix}_concept_id", f"{prefix}_source_value"))
        missing = mapped & ~unreadable & (np.isnan(value) | pd.isna(date))
        if missing.any():
            reports.append(_count(f.loc[missing], table, "no_value_or_date", "warning",
                                  f"{prefix}_concept_id", f"{prefix}_source_value"))
        keep = mapped & ~unreadable & ~missing
        # the unit concept, else the unit as written, else the measure's default — the default only where the
        # record names no unit at all: a recorded unit the mapping lacks is said, never replaced by the default
        unit_concept = _numbers(f["unit_concept_id"])
        named_unit = ~np.isnan(unit_concept) & (unit_concept != 0)
        unit = _map_codes(unit_concept, lambda u: unit_code(mapping.units.get(int(u))))
        todo = (unit < 0) & keep
        if todo.any():
            unit = np.where(todo, _map_codes(f["unit_source_value"], lambda u: unit_code(str(u).strip() or None)), unit)
            todo = (unit < 0) & keep
        unmapped_unit = todo & named_unit
        if unmapped_unit.any():
            reports.append(_count(f.loc[unmapped_unit], table, "unmapped_unit", "warning", f"{prefix}_concept_id",
                                  f"{prefix}_source_value", "unit_concept_id"))
        todo &= ~named_unit
        if todo.any():
            unit = np.where(todo, default_code[measure], unit)
            todo = (unit < 0) & keep & ~named_unit
        if todo.any():
            reports.append(_count(f.loc[todo], table, "no_unit", "warning", f"{prefix}_concept_id",
                                  f"{prefix}_source_value", "unit_concept_id"))
        uln = _numbers(f["range_high"]) if "range_high" in f else np.full(len(f), np.nan)
        frames.append(pd.DataFrame({"pid": f["pid"].to_numpy(dtype="int64")[keep], "date": date[keep],
                                    "measure": measure[keep], "value": value[keep], "unit": unit[keep],
                                    "upper_limit_normal": uln[keep]}))
    out = pd.concat(frames, ignore_index=True)
    # measure codes number the sorted names: (person, date, measure) is the contract's order
    order = np.lexsort((out["measure"].to_numpy(), out["date"].to_numpy(), out["pid"].to_numpy()))
    out = out.take(order).reset_index(drop=True)
    text = {  # text columns stay object: no per-row string conversion of millions of rows here
        "patient_id": _map_unique(out["pid"].to_numpy(), ids.to_dict().get),
        "measure": np.array([*measure_names, None], dtype=object)[out["measure"].to_numpy()],
        "unit": np.array([*unit_names, None], dtype=object)[out["unit"].to_numpy()]}
    out = pd.DataFrame({
        "patient_id": pd.Series(text["patient_id"], dtype=object), "date": out["date"].astype("datetime64[ns]"),
        "measure": pd.Series(text["measure"], dtype=object), "value": out["value"],
        "unit": pd.Series(text["unit"], dtype=object), "upper_limit_normal": out["upper_limit_normal"]})
    return out.reset_index(drop=True), _concat(reports)


def _events(obs: pd.DataFrame, death: pd.DataFrame, mapping: OmopMapping, ancestor: pd.DataFrame | None,
            ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """observation (event concepts / source values; grade = value_as_number, details = value_as_string) and the
    `death` table → contract `events`."""
    idx = build_index([(e.event, e) for e in mapping.events], ancestor, mapping.include_descendants)
    event = idx.match(obs["observation_concept_id"], obs["observation_source_concept_id"],
                      obs["observation_source_value"])
    f = obs.loc[event.notna().to_numpy()]
    grade = pd.to_numeric(f["value_as_number"], errors="coerce").astype(float)
    grade = grade.where(np.isfinite(grade))  # an infinite grade is no grade
    out = pd.DataFrame({"pid": f["pid"].to_numpy(), "date": parse_dates(f["observation_date"]).to_numpy(),
                        "event": event[event.notna()].to_numpy(), "grade": grade.to_numpy(dtype=float),
                        "details": f["value_as_string"].astype("object").to_numpy()})
    # an event without a readable date cannot be placed before or after a decision: not imported, and said
    reports = [_count(f.loc[out["date"].isna().to_numpy()], "observation", "unreadable_date", "error",
                      "observation_concept_id", "observation_source_value")]
    out = out.loc[out["date"].notna()]
    if mapping.death_event and not death.empty:
        died = parse_dates(death["death_date"])
        reports.append(_count(death.loc[died.isna()], "death", "unreadable_date", "error", None, None))
        out = pd.concat([out, pd.DataFrame({"pid": death["pid"].to_numpy(), "date": died.to_numpy(),
                                            "event": "death", "grade": np.nan, "details": pd.NA})
                         .loc[died.notna().to_numpy()]], ignore_index=True)
    # a death recorded in both `observation` and `death`, or twice, counts once: the earliest date, the rest said
    is_death = out["event"].eq("death")
    deaths = out.loc[is_death].sort_values(["pid", "date"], kind="stable")
    kept = deaths.drop_duplicates(["pid"])
    if len(kept) < len(deaths):
        reports.append(pd.DataFrame({"table": ["death"], "concept_id": [0], "source_value": [pd.NA],
                                     "reason": ["death_recorded_again"], "severity": ["info"],
                                     "records": [len(deaths) - len(kept)]}))
    out = pd.concat([out.loc[~is_death], kept], ignore_index=True)
    # grades as recorded: one that is not whole is the contract's to reject (never rounded here)
    out["grade"] = out["grade"].astype(float)
    out.insert(0, "patient_id", out["pid"].map(ids).astype("string"))
    out = out.drop(columns="pid").sort_values(["patient_id", "date", "event"], kind="stable")
    return out.reset_index(drop=True), _concat(reports)


# ------------------------------------------------------------------------------------------------ the writer
#: type concepts the writer records (32817 "EHR", 32838 "EHR prescription"; names as used by OHDSI ETLs).
EHR_TYPE, PRESCRIPTION_TYPE = 32817, 32838


def contract_to_omop(tables: Mapping[str, pd.DataFrame], mapping: OmopMapping, vocabulary: Any,
                     today: str | pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Contract tables → OMOP CDM v5.4 tables (person, observation_period, condition_occurrence, drug_exposure,
    measurement, observation, death) coded with the first concept (else source value) of each mapping entry, so
    `import_omop` with the same mapping reads the same contract tables back. Regimens keep their dose per
    administration in `quantity` with `dose_unit_source_value` and the schedule in `sig`; an ongoing regimen
    ends on `today`, the end of every person's observation period. Patient ids go to `person_source_value`."""
    today = pd.Timestamp(today).normalize()
    p = tables["patients"].reset_index(drop=True)
    pid = pd.Series(np.arange(1, len(p) + 1, dtype="int64"), index=p["patient_id"].astype(str).to_numpy())
    sex_concept = {v: k for k, v in reversed(list(mapping.sex.items()))}
    person = pd.DataFrame({
        "person_id": pid.to_numpy(), "gender_concept_id": p["sex"].map(sex_concept).fillna(0).astype("int64"),
        "year_of_birth": p["birth_year"].astype("int64"), "race_concept_id": 0, "ethnicity_concept_id": 0,
        "person_source_value": p["patient_id"].astype(str), "gender_source_value": p["sex"].astype(str)})

    def code(cs: ConceptSet) -> tuple[int, str | None]:
        if cs.concept_ids:
            return int(cs.concept_ids[0]), None
        return 0, cs.source_values[0] if cs.source_values else None

    cond_rows = []
    diag = {d.diagnosis: code(d) for d in mapping.diagnoses}
    for row in p.itertuples(index=False):
        person_id = pid[str(row.patient_id)]
        dx_date = pd.Timestamp(row.diagnosis_date)
        cond_rows.append((person_id, *diag[row.diagnosis], dx_date))
        if bool(row.ild):
            cond_rows.append((person_id, *code(mapping.ild), dx_date))
        if bool(row.cancer_associated):
            cond_rows.append((person_id, *code(mapping.cancer), dx_date))
    cond = pd.DataFrame(cond_rows, columns=["person_id", "condition_concept_id", "condition_source_value",
                                            "condition_start_date"])
    cond.insert(0, "condition_occurrence_id", np.arange(1, len(cond) + 1, dtype="int64"))
    cond["condition_type_concept_id"] = EHR_TYPE

    # antibodies: one presence test per antibody listed (all configured ones reported negative for `negative`)
    ab_code = {a.antibody: code(a) for a in mapping.antibodies}
    res = mapping.antibody_results
    pos_c = res.positive_concept_ids[0] if res.positive_concept_ids else None
    neg_c = res.negative_concept_ids[0] if res.negative_concept_ids else None
    pos_v = res.positive_values[0] if res.positive_values else None
    neg_v = res.negative_values[0] if res.negative_values else None
    ab_rows = []
    for row in p.itertuples(index=False):
        listed = [a.strip() for a in str(row.antibodies).split(";") if a.strip()] if pd.notna(row.antibodies) else []
        results = [(a, False) for a in ab_code] if listed == ["negative"] else [(a, True) for a in listed]
        for antibody, positive in results:
            concept, source = ab_code[antibody]
            ab_rows.append((pid[str(row.patient_id)], concept, pd.Timestamp(row.diagnosis_date), np.nan,
                            pos_c if positive else neg_c, None, np.nan, source, None,
                            pos_v if positive else neg_v))
    meas_cols = ["person_id", "measurement_concept_id", "measurement_date", "value_as_number",
                 "value_as_concept_id", "unit_concept_id", "range_high", "measurement_source_value",
                 "unit_source_value", "value_source_value"]
    ab_frame = pd.DataFrame(ab_rows, columns=meas_cols)

    # assessments: a measure with a concept id → measurement (unit concept); else observation by source value
    a = tables["assessments"]
    unit_concept = {str(v).lower(): k for k, v in reversed(list(mapping.units.items()))}
    mcode = {m.measure: code(m) for m in mapping.measures}
    concept = a["measure"].map(lambda m: mcode[m][0])
    source = a["measure"].map(lambda m: mcode[m][1])
    uc = a["unit"].astype(str).str.lower().map(unit_concept)
    as_meas = concept != 0
    uln = a["upper_limit_normal"] if "upper_limit_normal" in a else pd.Series(np.nan, index=a.index)
    lab = pd.DataFrame({
        "person_id": a["patient_id"].astype(str).map(pid).to_numpy(), "measurement_concept_id": concept.to_numpy(),
        "measurement_date": a["date"].to_numpy(), "value_as_number": a["value"].to_numpy(dtype=float),
        "value_as_concept_id": None, "unit_concept_id": uc.to_numpy(), "range_high": uln.to_numpy(dtype=float),
        "measurement_source_value": a["measure"].astype(str).to_numpy(),
        "unit_source_value": a["unit"].astype(str).to_numpy(), "value_source_value": None})[as_meas.to_numpy()]
    measurement = pd.concat([ab_frame, lab], ignore_index=True)
    measurement.insert(0, "measurement_id", np.arange(1, len(measurement) + 1, dtype="int64"))
    measurement["measurement_type_concept_id"] = EHR_TYPE

    site = a.loc[~as_meas.to_numpy()]
    obs = pd.DataFrame({
        "person_id": site["patient_id"].astype(str).map(pid).to_numpy(), "observation_concept_id": 0,
        "observation_date": site["date"].to_numpy(), "value_as_number": site["value"].to_numpy(dtype=float),
        "value_as_string": None, "observation_source_value": source[~as_meas].to_numpy(),
        "unit_source_value": site["unit"].astype(str).to_numpy()})
    e = tables.get("events")
    death = pd.DataFrame(columns=["person_id", "death_date", "death_type_concept_id"])
    if e is not None and len(e):
        ecode = {m.event: code(m) for m in mapping.events}
        is_death = e["event"].eq("death") & mapping.death_event
        ev = e.loc[~is_death]
        obs = pd.concat([obs, pd.DataFrame({
            "person_id": ev["patient_id"].astype(str).map(pid).to_numpy(),
            "observation_concept_id": ev["event"].map(lambda x: ecode[x][0]).to_numpy(),
            "observation_date": ev["date"].to_numpy(),
            "value_as_number": pd.to_numeric(ev["grade"], errors="coerce").to_numpy(dtype=float),
            "value_as_string": ev["details"].astype("object").where(ev["details"].notna(), None).map(
                lambda t: None if t is None else str(t)[:60]).to_numpy(),
            "observation_source_value": ev["event"].map(lambda x: ecode[x][1]).to_numpy(),
            "unit_source_value": None})], ignore_index=True)
        dead = e.loc[is_death]
        death = pd.DataFrame({"person_id": dead["patient_id"].astype(str).map(pid).to_numpy(),
                              "death_date": dead["date"].to_numpy(), "death_type_concept_id": EHR_TYPE})
    obs.insert(0, "observation_id", np.arange(1, len(obs) + 1, dtype="int64"))
    obs["observation_type_concept_id"] = EHR_TYPE

    r = tables["regimens"]
    generic = vocabulary.lookup_many(r["drug"].astype(str))
    drug_code: dict[tuple[str, str], int] = {}
    for dm in mapping.drugs:
        if dm.concept_ids:
            drug_code.setdefault((str(vocabulary.lookup(dm.drug)), dm.drug.lower()), int(dm.concept_ids[0]))
    by_generic: dict[str, int] = {}
    for (g, _), c in drug_code.items():
        by_generic.setdefault(g, c)
    concept_of = [drug_code.get((str(g), str(w).lower()), by_generic.get(str(g), 0))
                  for g, w in zip(generic, r["drug"], strict=True)]
    route_concept = {v: k for k, v in reversed(list(mapping.routes.items()))}
    end = r["end_date"].where(r["end_date"].notna(), today)
    drug_exposure = pd.DataFrame({
        "drug_exposure_id": np.arange(1, len(r) + 1, dtype="int64"),
        "person_id": r["patient_id"].astype(str).map(pid).to_numpy(), "drug_concept_id": concept_of,
        "drug_exposure_start_date": r["start_date"].to_numpy(), "drug_exposure_end_date": end.to_numpy(),
        "drug_type_concept_id": PRESCRIPTION_TYPE, "quantity": r["dose"].to_numpy(dtype=float),
        "sig": r["interval"].astype(str).to_numpy(),
        "route_concept_id": r["route"].map(route_concept).to_numpy(),
        "route_source_value": r["route"].astype(str).to_numpy(),
        "dose_unit_source_value": r["dose_unit"].astype(str).to_numpy(),
        "drug_source_value": r["drug"].astype(str).str.slice(0, 50).to_numpy()})
    first = pd.concat([p.set_index(p["patient_id"].astype(str))["diagnosis_date"],
                       r.groupby(r["patient_id"].astype(str))["start_date"].min(),
                       a.groupby(a["patient_id"].astype(str))["date"].min()], axis=1).min(axis=1)
    period = pd.DataFrame({"observation_period_id": pid.to_numpy(), "person_id": pid.to_numpy(),
                           "observation_period_start_date": first.reindex(pid.index).to_numpy(),
                           "observation_period_end_date": today, "period_type_concept_id": EHR_TYPE})
    return {"person": person, "observation_period": period, "condition_occurrence": cond,
            "drug_exposure": drug_exposure, "measurement": measurement, "observation": obs, "death": death}
