"""The model card: a markdown summary of the registered model following the TRIPOD+AI items that apply.

Pure: built from the training summary, the configuration and the held-out metrics (no I/O). It states the
intended use (decision support, not validated for clinical use), the data and population, the outcome
definition, the options and eligibility rules, performance with subgroups and calibration, and limitations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

from features.config import LabelConfig


class ModelCardInputs(BaseModel):
    """Everything the card reports; aggregate numbers only (never a patient identifier)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    model_name: str
    model_version: str | None = None
    learner: str
    response_threshold: float
    juvenile_response_threshold: float
    interval_meaning: str = "intervals from a patient-level bootstrap ensemble"
    horizon_weeks: int | None = None
    #: the label settings the model was trained with (its recorded data settings): the outcome definition the card
    #: states; None for a model saved before they were recorded (then only its thresholds are known)
    labels: LabelConfig | None = None
    data_source: str
    n_train_patients: int
    n_train_decisions: int
    n_test_patients: int
    n_test_decisions: int
    options: Sequence[tuple[str, str]]  # (name, label)
    eligibility_rules: Mapping[str, str]
    headline: Mapping[str, float]
    decision_values: pd.DataFrame | None = None
    subgroups: pd.DataFrame | None = None
    simulator: pd.DataFrame | None = None
    baselines: pd.DataFrame | None = None  # models.evaluation.HeldOutEvaluation.baselines
    guideline: Sequence[str] = ()  # configs/options.yaml's guideline order (option names)
    safety_weight: float = 0.0  # the recommendation ranks by p_response - safety_weight x p_safety
    confidence_level: float = 0.95
    overlap_warnings: Mapping[str, str] = {}
    modelled_options: Sequence[str] | None = None  # None: every option
    selection: pd.DataFrame | None = None  # train's learner selection table (models.selection), None: fixed learner
    git_revision: str | None = None


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, blank for missing."""
    if value is None:
        return ""
    if isinstance(value, float | int) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            return "–"
        if isinstance(value, int):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A DataFrame as a GitHub markdown table (numbers rounded), for cards and notes."""
    cols = [c for c in (columns or list(frame.columns)) if c in frame.columns]
    if not cols or frame.empty:
        return "_(none)_"
    head = "| " + " | ".join(cols) + " |"
    rule = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(_fmt(row[c], digits) for c in cols) + " |" for _, row in frame[cols].iterrows()]
    return "\n".join([head, rule, *body])


def _points(value: float) -> str:
    """A difference in response probability as signed points in 100 ('+2.1')."""
    return f"{100 * value:+.1f}"


def guideline_gain(headline: Mapping[str, float], guideline_labels: Sequence[str], confidence_level: float = 0.95
                   ) -> str | None:
    """One sentence: how much the model's recommendation gains over the guideline list — the doubly robust
    difference in response rate with its CI and, with the simulator's truth, the regret of both. None when the
    evaluation has no guideline comparison."""
    h = {k: float(v) for k, v in headline.items() if v is not None and not math.isnan(float(v))}
    if "decision_value_gain_vs_guideline" not in h:
        return None
    level = f"{round(100 * confidence_level)} % CI"
    order = " > ".join(guideline_labels)
    text = (f"Against the guideline list{f' ({order}: the first eligible option)' if order else ''}, following the "
            f"model's recommendation changed the doubly robust response rate by "
            f"{_points(h['decision_value_gain_vs_guideline'])} points in 100")
    if "decision_value_gain_vs_guideline_ci_low" in h and "decision_value_gain_vs_guideline_ci_high" in h:
        text += (f" ({level} {_points(h['decision_value_gain_vs_guideline_ci_low'])} to "
                 f"{_points(h['decision_value_gain_vs_guideline_ci_high'])})")
    if "response_n" in h:
        text += f" on {int(h['response_n'])} held-out decisions"
    if "sim_regret" in h and "sim_guideline_regret" in h:
        text += (f"; against the simulator's truth its regret was {h['sim_regret']:.3f} against the guideline "
                 f"list's {h['sim_guideline_regret']:.3f}")
        if "sim_regret_vs_guideline_ci_low" in h and "sim_regret_vs_guideline_ci_high" in h:
            text += (f" (difference {h['sim_regret_vs_guideline']:+.3f}, {level} "
                     f"{h['sim_regret_vs_guideline_ci_low']:+.3f} to {h['sim_regret_vs_guideline_ci_high']:+.3f})")
    return text + "."


def safety_outcome(labels: LabelConfig | None) -> str:
    """The safety outcome in words from the label settings ('serious infection, opportunistic infection or grade ≥ 3
    cytopenia'); a neutral phrase when they are unknown."""
    if labels is None:
        return "a safety event as defined when the model was trained"
    words = [f"grade ≥ {labels.cytopenia_min_grade} cytopenia" if e == "cytopenia" else e.replace("_", " ")
             for e in labels.safety_events]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def build_model_card(inputs: ModelCardInputs) -> str:
    """The markdown model card (TRIPOD+AI items 1-3, 5-7, 9, 12, 19, 22-23, 26 as they apply to a CDS model)."""
    i = inputs
    h = dict(i.headline)
    version = f" version {i.model_version}" if i.model_version else ""
    safety = safety_outcome(i.labels)
    category = f"; {i.labels.response_category} improvement" if i.labels is not None else ""
    horizon = i.labels.horizon_weeks if i.labels is not None else i.horizon_weeks or 24
    lines: list[str] = [
        f"# Model card: {i.model_name}{version}",
        "",
        "## Intended use",
        "**Decision support, not validated for clinical use.** For a patient with refractory dermatomyositis "
        "who still has active disease on their current regimen, the model estimates, for each escalation "
        "option the patient is eligible for, the probability of a clinical response, the expected Total "
        f"Improvement Score and the risk of {safety}, each with an interval. "
        "It informs a rheumatologist's discussion with the patient; it does not make the decision.",
        "",
        "## Data and population",
        f"- Source: {i.data_source}.",
        f"- Development: {i.n_train_decisions} decision points from {i.n_train_patients} patients; "
        f"held-out evaluation: {i.n_test_decisions} decision points from {i.n_test_patients} patients "
        "(split by patient, so no patient is in both).",
        "- A decision point is a visit with active disease on a regimen stable for about 3 months; features "
        "use only data dated strictly before the visit.",
        "",
        "## Outcome",
        f"- Response: ACR/EULAR 2016 Total Improvement Score (TIS) ≥ {i.response_threshold:g} "
        f"(juvenile DM ≥ {i.juvenile_response_threshold:g}{category}) at {horizon} weeks after the decision.",
        f"- Expected TIS (0-100) at the same visit; safety: {safety} within the horizon.",
        "",
        "## Options and eligibility",
    ]
    for name, label in i.options:
        rule = i.eligibility_rules.get(name, "")
        unmodelled = i.modelled_options is not None and name not in i.modelled_options
        note = " — **not modelled** (too few training decisions; always shown as ineligible)" if unmodelled else ""
        lines.append(f"- `{name}` — {label}" + (f": {rule}" if rule else "") + note)
    lines += [
        "",
        "Ineligible options get no number. The recommended option is the eligible option with the highest "
        "predicted probability of response"
        + (f" less {i.safety_weight:g} × its predicted safety risk" if i.safety_weight else "")
        + " among those no drug label advises against with the current drugs; an option a label advises against "
        "is shown, ranked after the others, and never recommended.",
        "",
        "## Model",
        f"- Outcome learner: `{i.learner}`; probabilities recalibrated on patient-grouped out-of-fold predictions "
        "by one increasing map for all options (it never reorders them).",
        f"- Intervals: {i.interval_meaning}",
        "- A propensity model of the option clinicians chose gives overlap diagnostics and the doubly robust "
        "decision value.",
    ]
    if i.selection is not None and len(i.selection):
        lines += [
            "",
            "### How the learner was chosen (training patients only, no truth)",
            "Each candidate was fitted on patient-grouped folds of the training patients and recommended for the "
            "held-out fold; the value is the cross-fitted doubly robust response rate of its recommendations, the "
            "DR-loss the mean squared error of its option-vs-continue effects against doubly robust pseudo-outcomes. "
            "The first candidate listed within one standard error of the best by the `criterion` column (policy "
            "value for a binary outcome) was chosen (candidates in the order params.yaml lists them: preferred first).",
            "",
            markdown_table(i.selection, ["candidate", "criterion", "policy_value", "policy_value_se",
                                         "difference_vs_best", "difference_se", "dr_loss", "dr_loss_se",
                                         "factual_log_loss", "chosen", "failed"]),
        ]
    lines += [
        "",
        "## Performance on held-out patients",
        "| metric | value |",
        "|---|---|",
    ]
    for key in sorted(h):
        lines.append(f"| {key} | {_fmt(h[key])} |")
    if i.decision_values is not None:
        lines += [
            "",
            "### Decision value (doubly robust response rate if every patient followed the policy)",
            markdown_table(i.decision_values),
        ]
    labels = dict(i.options)
    gain = guideline_gain(h, [labels.get(g, g) for g in i.guideline], i.confidence_level)
    if gain or i.baselines is not None:
        lines += ["", "### Against the baselines (the guideline list, the best single option, always continue, "
                  "care as given)"]
        if gain:
            lines += [gain]
    if i.baselines is not None and len(i.baselines):
        cols = ["policy", "description", "n", "value", "ci_low", "ci_high", "difference_vs_guideline",
                "difference_ci_low", "difference_ci_high", "regret", "regret_vs_guideline"]
        overall = i.baselines[i.baselines["subgroup"] == "all"]
        by_group = i.baselines[(i.baselines["subgroup"] != "all") & (i.baselines["policy"] == "recommended")]
        lines += ["", "Doubly robust response rate of each policy (`value`) and its difference from the guideline "
                  "list; `regret` against the simulator's truth where it is known.", "",
                  markdown_table(overall, cols), "",
                  "The model's recommendation against the guideline list by subgroup (– where a subgroup has "
                  "fewer decisions than `evaluation.subgroup_min_n`):", "",
                  markdown_table(by_group, ["subgroup", "level", "n", "value", "difference_vs_guideline",
                                            "difference_ci_low", "difference_ci_high", "n_truth", "regret",
                                            "regret_vs_guideline"])]
    if i.subgroups is not None:
        lines += ["", "### Subgroups (response model, factual option)", markdown_table(i.subgroups)]
    if i.simulator is not None:
        lines += [
            "",
            "### Against the simulator's truth (evaluation only, never training)",
            markdown_table(i.simulator),
        ]
    lines += ["", "## Overlap"]
    if i.overlap_warnings:
        lines += [f"- `{k}`: {v}" for k, v in i.overlap_warnings.items()]
    else:
        lines.append("- No option has eligible decisions below the positivity threshold.")
    lines += [
        "",
        "## Limitations",
        "- Per-option estimates come from observational data and assume **no unmeasured confounding**: "
        "everything that drove the clinician's choice and affects the outcome is among the features.",
        "- Positivity: options rarely chosen for patients like this one rest on extrapolation (see Overlap).",
        "- Options outside the catalogue, combinations of options, and doses other than the catalogue's "
        "starting regimens are not modelled.",
        "- The default data are simulated from published trial results; performance on real records is "
        "unknown until validated externally.",
        "- Calibration can drift with practice and population; recheck it before any use.",
    ]
    if i.git_revision:
        lines += ["", f"_Code revision {i.git_revision}._"]
    return "\n".join(lines) + "\n"
