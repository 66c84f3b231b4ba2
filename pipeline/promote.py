"""`escalate promote`: move the `champion` alias to the candidate only when it is better on held-out data.

The rule (`promotion_decision`, pure): the first evaluated candidate becomes champion; a candidate trained on
another outcome definition than the champion (`labels:`, the response thresholds) is not compared with it, since
their figures measure different outcomes (the champion stays until moved by hand); otherwise the candidate must
beat the champion's held-out decision value (doubly robust response rate under the recommendation) by more than
`min_decision_value_gain` AND be at least as well calibrated (expected calibration error no worse than the
champion's plus `ece_tolerance`). Otherwise the champion stays and the reason is printed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import Field

from features.config import Frozen
from pipeline.config import ROOT

if TYPE_CHECKING:
    from pipeline.settings import Settings

DECISION_VALUE = "decision_value_recommended"
CALIBRATION = "response_ece"
#: the run params (as train logs them, flattened) that define the outcomes the held-out figures measure
OUTCOME_PARAMS = ("labels.", "train.response_threshold", "train.juvenile_response_threshold")


class PromotionRule(Frozen):
    """Margins of the promotion rule (the `promote:` section of params.yaml)."""

    min_decision_value_gain: float = Field(0.0, ge=0, description="candidate DV must exceed champion DV by more")
    ece_tolerance: float = Field(0.0, ge=0, description="candidate ECE may exceed champion ECE by at most this")


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to move `champion`, and why (printed either way); `evidence`: the rule and the candidate's
    held-out figures it was judged on (what only the inputs decide, unlike the registry's versions); `judged`:
    false when the candidate lacks the held-out figures the rule needs (never evaluated)."""

    promote: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    judged: bool = True


def _metric(metrics: Mapping[str, float] | None, key: str) -> float:
    value = (metrics or {}).get(key)
    return float(value) if value is not None and not math.isnan(float(value)) else math.nan


def promotion_decision(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    rule: PromotionRule | None = None,
    *,
    same_data: bool = True,
    same_fit: bool = False,
    other_outcome: Sequence[str] = (),
) -> PromotionDecision:
    """Apply the promotion rule to the held-out metrics of candidate and champion (None: no champion yet).
    `same_fit`: the candidate's bundle is byte for byte the champion's, shipped with other code or requirements
    (a fix): the same model, so it replaces the champion once evaluated, without having to beat itself.
    `other_outcome`: the outcome settings the two were trained with differently (`outcome_differences`): their
    response rates and calibration measure different outcomes, so they are not compared and the champion stays."""
    rule = rule or PromotionRule()
    c_dv, c_ece = _metric(candidate, DECISION_VALUE), _metric(candidate, CALIBRATION)
    if math.isnan(c_dv) or math.isnan(c_ece):
        missing = [k for k, v in ((DECISION_VALUE, c_dv), (CALIBRATION, c_ece)) if math.isnan(v)]
        return PromotionDecision(False, f"candidate has no held-out {', '.join(missing)}: run `escalate evaluate` first",
                                 judged=False)
    if champion is None:
        return PromotionDecision(True, f"no champion yet: the first evaluated candidate becomes champion "
                                       f"(decision value {c_dv:.3f}, ECE {c_ece:.3f})")
    if other_outcome:
        return PromotionDecision(False, "champion kept, not compared: the candidate was trained on another outcome "
                                        f"definition than the champion ({'; '.join(other_outcome)}), so their held-out "
                                        "decision values and ECE measure different outcomes. To keep the new "
                                        "definition, re-evaluate the champion on it or move alias 'champion' to the "
                                        "candidate explicitly (MLflow's UI or "
                                        "MlflowClient().set_registered_model_alias)")
    if same_fit and same_data:
        return PromotionDecision(True, "the champion's fitted model with the code and requirements shipped now "
                                       f"(decision value {c_dv:.3f}, ECE {c_ece:.3f}): it replaces the champion")
    h_dv, h_ece = _metric(champion, DECISION_VALUE), _metric(champion, CALIBRATION)
    if math.isnan(h_dv) or math.isnan(h_ece):
        return PromotionDecision(True, "the champion has no held-out decision value or ECE on record: the "
                                       "evaluated candidate replaces it")
    note = "" if same_data else " (note: candidate and champion were evaluated on different data)"
    gain = c_dv - h_dv
    better_value = gain > rule.min_decision_value_gain
    calibrated = c_ece <= h_ece + rule.ece_tolerance
    summary = (f"decision value {c_dv:.3f} vs champion {h_dv:.3f} (gain {gain:+.3f}, needs > "
               f"{rule.min_decision_value_gain:g}); ECE {c_ece:.3f} vs champion {h_ece:.3f} "
               f"(allowed up to {h_ece + rule.ece_tolerance:.3f})")
    if better_value and calibrated:
        return PromotionDecision(True, f"candidate beats the champion: {summary}{note}")
    why = []
    if not better_value:
        why.append("the candidate's held-out decision value is not higher")
    if not calibrated:
        why.append("it is worse calibrated" if why else "the candidate is worse calibrated")
    return PromotionDecision(False, f"champion kept: {' and '.join(why)}: {summary}{note}")


def outcome_differences(candidate: Mapping[str, str], champion: Mapping[str, str]) -> list[str]:
    """The `OUTCOME_PARAMS` two runs' params both hold with different values, as "labels.response_category:
    candidate 'major', champion 'moderate'" (a setting only one run logged, added since, is not compared)."""
    keys = sorted(k for k in candidate.keys() & champion.keys() if k.startswith(OUTCOME_PARAMS))
    return [f"{k}: candidate {candidate[k]!r}, champion {champion[k]!r}" for k in keys if candidate[k] != champion[k]]


def run_promote(params: Settings | Path = Path("params.yaml"), root: Path = ROOT) -> PromotionDecision:
    """Compare the `candidate` and `champion` versions' run metrics and move `champion` when the rule says so."""
    from dataclasses import replace

    from mlflow.tracking import MlflowClient

    from pipeline import registry
    from pipeline.io import rounded
    from pipeline.settings import resolve

    rule = resolve(params).promote
    registry.setup_mlflow(root)
    client = MlflowClient()
    cand = registry.alias_run_id(registry.CANDIDATE)
    if cand is None:
        raise typer.BadParameter(f"no version of {registry.MODEL_NAME} has alias 'candidate': run `escalate train`")
    cand_version, cand_run = cand
    cand_info = client.get_run(cand_run).data
    evidence = {"rule": rule.model_dump(), "candidate": rounded(
        {k: cand_info.metrics.get(k) for k in (DECISION_VALUE, CALIBRATION)})}
    champ = registry.alias_run_id(registry.CHAMPION)
    if champ is not None and champ[0] == cand_version:
        return PromotionDecision(False, f"version {cand_version} is already the champion", evidence)
    champ_info = client.get_run(champ[1]).data if champ is not None else None
    same = champ_info is None or all(
        cand_info.tags.get(k) == champ_info.tags.get(k) for k in cand_info.tags if k.startswith("dataset.")
    )
    # the champion's bundle shipped anew: only by a run that records what it ships (a run from before the code tag,
    # or one reverting to older code, has none to compare or is not newer)
    c_tags, h_tags = cand_info.tags, champ_info.tags if champ_info is not None else {}
    bundle, code = c_tags.get(registry.BUNDLE_SHA_TAG), c_tags.get(registry.CODE_SHA_TAG)
    same_fit = (champ is not None and None not in (bundle, code) and bundle == h_tags.get(registry.BUNDLE_SHA_TAG)
                and code != h_tags.get(registry.CODE_SHA_TAG) and int(cand_version) > int(champ[0]))
    other = outcome_differences(cand_info.params, champ_info.params) if champ_info is not None else []
    decision = replace(promotion_decision(cand_info.metrics, champ_info.metrics if champ_info else None, rule,
                                          same_data=same, same_fit=same_fit, other_outcome=other), evidence=evidence)
    if decision.promote:
        registry.set_alias(registry.CHAMPION, cand_version)
        client.set_model_version_tag(registry.MODEL_NAME, cand_version, "promotion", decision.reason[:4900])
    return decision


def registry_champion_version() -> str | None:
    """The model version that holds alias `champion` now, if any."""
    from pipeline import registry

    found = registry.alias_run_id(registry.CHAMPION)
    return None if found is None else str(found[0])
