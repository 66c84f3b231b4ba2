"""Heterogeneous treatment effects, safety risk and the simulated clinician's choice at a decision point.

Effects act multiplicatively on latent activity: follow-up = baseline × (1 − δ) + noise, with
1 − δ = (1 − background)(1 − still-accruing effect of recently started drugs)(1 − the option's new effect).
Each drug's effect accrues as 1 − exp(−t / onset); subgroup modifiers encode docs/sources.md §3 and §5.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from features.vocabulary import OptionCatalog
from simulator.config import DrugEffect, EffectsConfig, PolicyConfig, SafetyConfig

DAYS_PER_WEEK = 7.0


class DecisionState(NamedTuple):
    """What is true of each patient at a decision point (one row per decision)."""

    on_drug: pd.DataFrame  # bool column per generic
    days_on: pd.DataFrame  # days since the current exposure of each generic started (NaN = not on)
    shortfall: pd.DataFrame  # 1 − dose/target for below-target drugs, else 0
    prednisone_mg: np.ndarray
    muscle: np.ndarray
    skin: np.ndarray
    age: np.ndarray
    prior_infection: np.ndarray
    physician_global: np.ndarray


def onset(weeks: np.ndarray | float, onset_weeks: np.ndarray | float) -> np.ndarray:
    """Fraction of a drug's full effect reached after `weeks`: 1 − exp(−weeks / onset)."""
    return 1.0 - np.exp(-np.maximum(weeks, 0.0) / onset_weeks)


def subgroups(patients: pd.DataFrame, state: DecisionState, config: EffectsConfig) -> dict[str, np.ndarray]:
    """Boolean subgroup membership per decision, by the names effect modifiers and the policy use."""
    return {
        "anti_mda5": patients["anti_mda5"].to_numpy(bool),
        "anti_synthetase": patients["anti_synthetase"].to_numpy(bool),
        "anti_mi2": patients["anti_mi2"].to_numpy(bool),
        "antibody_negative": patients["antibody_negative"].to_numpy(bool),
        "juvenile": patients["juvenile"].to_numpy(bool),
        "dermatomyositis": patients["dermatomyositis"].to_numpy(bool),
        "pm_imnm": patients["pm_imnm"].to_numpy(bool),
        "ild": patients["ild"].to_numpy(bool),
        "severe_muscle": state.muscle >= config.severe_muscle_threshold,
        "skin_predominant": state.skin > state.muscle,
        "prior_infection": state.prior_infection,
    }


def drug_effect(effect: DrugEffect, groups: dict[str, np.ndarray], cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-onset muscle and skin effect and onset time constant (weeks) of one drug for each decision."""
    n = len(next(iter(groups.values())))
    muscle = np.full(n, effect.muscle)
    skin = np.full(n, effect.skin)
    tau = np.full(n, effect.onset_weeks)
    for mod in effect.modifiers:
        sel = groups[mod.when]
        muscle = np.where(sel, muscle * mod.muscle, muscle)
        skin = np.where(sel, skin * mod.skin, skin)
        tau = np.where(sel, tau * mod.onset, tau)
    return np.minimum(muscle, cap), np.minimum(skin, cap), tau


class OptionEffects(NamedTuple):
    """Per decision × option: the share of activity kept by what every arm gets (background + still-accruing
    drugs) and the option's new effect; `delta` combines them with a responsiveness multiplier."""

    keep_muscle: np.ndarray  # (decisions, 1)
    keep_skin: np.ndarray
    new_muscle: np.ndarray  # (decisions, options)
    new_skin: np.ndarray
    #: a switch's factor (≥ 1) on the activity left: the stopped drug's accrued effect fades after its washout
    #: and its further accrual is lost (decisions, options); None: no switch option (every factor 1).
    stop_muscle: np.ndarray | None = None
    stop_skin: np.ndarray | None = None

    def changes(self) -> np.ndarray:
        """Per decision × option: whether the option changes anything at this decision (a new effect or a stop)."""
        out = (self.new_muscle != 0) | (self.new_skin != 0)
        if self.stop_muscle is not None and self.stop_skin is not None:
            out |= (self.stop_muscle != 1) | (self.stop_skin != 1)
        return out

    def delta(
        self, responsiveness: np.ndarray | float, cap: float, new_responsiveness: np.ndarray | float | None = None,
        harmed: np.ndarray | None = None, flare: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """δ for muscle and skin; `responsiveness` (broadcastable, mean 1) scales every effect of this draw and
        `new_responsiveness` (default: the same) the option's new effect (0 for a non-responder). Where `harmed`
        (broadcastable bool) the new drug was stopped for an adverse event: its effect is lost and activity rises
        by `flare` (δ can then be negative: worse than continuing)."""
        r = np.asarray(responsiveness)
        rn = r if new_responsiveness is None else np.asarray(new_responsiveness)
        new_m = np.minimum(self.new_muscle * rn, cap)
        new_s = np.minimum(self.new_skin * rn, cap)
        if harmed is not None:
            new_m = np.where(harmed, -flare, new_m)
            new_s = np.where(harmed, -flare, new_s)
        left_m = (1 - np.minimum((1 - self.keep_muscle) * r, cap)) * (1 - new_m)
        left_s = (1 - np.minimum((1 - self.keep_skin) * r, cap)) * (1 - new_s)
        if self.stop_muscle is not None and self.stop_skin is not None:  # a switch: the stopped drug's effect fades
            left_m = left_m * self.stop_muscle
            left_s = left_s * self.stop_skin
        return np.minimum(1 - left_m, cap), np.minimum(1 - left_s, cap)


def option_effects(
    catalog: OptionCatalog,
    state: DecisionState,
    groups: dict[str, np.ndarray],
    horizon_weeks: float,
    config: EffectsConfig,
) -> OptionEffects:
    """Effects of every option by the horizon (see `OptionEffects`); δ = 1 − keep × (1 − new).

    Adding a drug the patient already takes changes nothing; optimising with nothing below target equals continue.
    A switch adds its drug as an add does and stops a current one (`stop_factor`); a switch away from a drug the
    patient does not take is void (ineligible): it changes nothing, like an add of a drug already taken.
    """
    n = len(state.muscle)
    h = float(horizon_weeks)
    keep_m = np.full(n, 1.0 - config.background.muscle * onset(h, config.background.onset_weeks))
    keep_s = np.full(n, 1.0 - config.background.skin * onset(h, config.background.onset_weeks))
    full: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    accrual: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for generic, effect in config.drugs.items():
        dm, ds, tau = drug_effect(effect, groups, config.max_effect)
        full[generic] = (dm, ds, tau)
        if generic not in state.days_on.columns:
            continue
        weeks_on = state.days_on[generic].to_numpy(float) / DAYS_PER_WEEK
        on = ~np.isnan(weeks_on)
        w = np.nan_to_num(weeks_on)
        now, later = onset(w, tau), onset(w + h, tau)
        keep_m *= np.where(on, (1 - dm * later) / (1 - dm * now), 1.0)
        keep_s *= np.where(on, (1 - ds * later) / (1 - ds * now), 1.0)
        accrual[generic] = (on, dm, ds, now, later)
    switches = any(o.kind == "switch" for o in catalog.options)
    stop_m = np.ones((n, len(catalog.options))) if switches else None
    stop_s = np.ones((n, len(catalog.options))) if switches else None
    new_muscle = np.zeros((n, len(catalog.options)))
    new_skin = np.zeros((n, len(catalog.options)))
    for j, opt in enumerate(catalog.options):
        new_m = np.zeros(n)
        new_s = np.zeros(n)
        if opt.kind == "optimise":
            remaining = np.ones(n)
            for generic, potency in config.optimise.potency.items():
                if generic in state.shortfall.columns:
                    remaining *= 1 - np.clip(potency * state.shortfall[generic].to_numpy(float), 0, 1)
            new_m = new_s = (1 - remaining) * onset(h, config.optimise.onset_weeks)
        elif opt.kind in ("add", "switch") and opt.adds in full:
            dm, ds, tau = full[opt.adds]
            already = state.on_drug[opt.adds].to_numpy(bool) if opt.adds in state.on_drug.columns else np.zeros(n, bool)
            if opt.kind == "switch":
                already = already | ~_on(state, opt.stops)
            g = onset(h, tau)
            new_m = np.where(already, 0.0, dm * g)
            new_s = np.where(already, 0.0, ds * g)
        new_muscle[:, j] = new_m
        new_skin[:, j] = new_s
        if opt.kind == "switch" and stop_m is not None and stop_s is not None and opt.stops in accrual:
            stop_m[:, j], stop_s[:, j] = stop_factor(accrual[opt.stops], h, config.washout_weeks.get(str(opt.stops), config.washout_default_weeks))
    return OptionEffects(keep_m[:, None], keep_s[:, None], new_muscle, new_skin, stop_m, stop_s)


def stop_factor(
    accrual: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], horizon_weeks: float, washout_weeks: float
) -> tuple[np.ndarray, np.ndarray]:
    """Muscle and skin factor on the activity left at the horizon when a current drug is stopped at the decision,
    relative to continuing it: its accrued effect E·g(now) fades linearly to nothing over `washout_weeks`, and its
    further accrual E·g(now + h) is lost: (1 − E·g(now)·max(0, 1 − h/W)) / (1 − E·g(now + h)). 1 where not on it."""
    on, dm, ds, now, later = accrual
    kept = max(0.0, 1.0 - float(horizon_weeks) / washout_weeks)
    muscle = np.where(on, (1 - dm * now * kept) / (1 - dm * later), 1.0)
    skin = np.where(on, (1 - ds * now * kept) / (1 - ds * later), 1.0)
    return muscle, skin


def safety_risk(
    catalog: OptionCatalog,
    state: DecisionState,
    ild: np.ndarray,
    horizon_weeks: float,
    config: SafetyConfig,
) -> np.ndarray:
    """True probability of serious infection or grade ≥ 3 cytopenia within the horizon, per decision × option,
    from a logistic model of the immunosuppression burden after the option (IVIG adds none)."""
    n = len(state.muscle)
    base = (
        config.intercept
        + config.prednisone_over_10mg * (state.prednisone_mg > 10)
        + config.age_per_decade_over_50 * np.maximum(state.age - 50, 0) / 10
        + config.ild * ild
        + config.prior_infection * state.prior_infection
    )
    on = {g: state.on_drug[g].to_numpy(bool) if g in state.on_drug.columns else np.zeros(n, bool) for g in config.drug}
    current = sum((coef * on[g] for g, coef in config.drug.items()), np.zeros(n))
    out = np.empty((n, len(catalog.options)))
    for j, opt in enumerate(catalog.options):
        extra = np.zeros(n)
        if opt.kind in ("add", "switch") and opt.adds in config.drug:
            extra = np.where(on[opt.adds], 0.0, config.drug[opt.adds])
        if opt.kind == "switch":  # the stopped drug's burden goes with it; void where it is not current
            current = _on(state, opt.stops)
            extra = np.where(current, extra - config.drug.get(str(opt.stops), 0.0), 0.0)
        p_ref = 1 / (1 + np.exp(-(base + current + extra)))
        out[:, j] = 1 - (1 - p_ref) ** (horizon_weeks / config.reference_weeks)
    return out


def interruption_risk(catalog: OptionCatalog, state: DecisionState, config: EffectsConfig) -> np.ndarray:
    """Per decision × option: the chance that the added drug is stopped for an adverse event within the horizon
    (`effects.harm.interruption`); 0 for continue, optimise and a drug the patient already takes."""
    n = len(state.muscle)
    out = np.zeros((n, len(catalog.options)))
    for j, opt in enumerate(catalog.options):
        if opt.kind in ("add", "switch") and opt.adds in config.harm.interruption:
            already = state.on_drug[opt.adds].to_numpy(bool) if opt.adds in state.on_drug.columns else np.zeros(n, bool)
            if opt.kind == "switch":
                already = already | ~_on(state, opt.stops)
            out[:, j] = np.where(already, 0.0, config.harm.interruption[opt.adds])
    return out


def _on(state: DecisionState, generic: str | None) -> np.ndarray:
    """Whether each decision's patient is on `generic`."""
    if generic is None or generic not in state.on_drug.columns:
        return np.zeros(len(state.muscle), bool)
    return state.on_drug[generic].to_numpy(bool)


def policy_features(
    state: DecisionState, groups: dict[str, np.ndarray], any_below: np.ndarray, refractory: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The features the simulated clinician weighs (severity standardised around a physician global of 5 cm).
    `refractory` is the patient's latent refractoriness (no record shows it): a policy coefficient on it is
    unmeasured confounding, since it also lowers the chance of response."""
    extra = {} if refractory is None else {"refractory": np.asarray(refractory, dtype=float)}
    return extra | {
        "severity": (state.physician_global - 5.0) / 2.0,
        "ild": groups["ild"].astype(float),
        "anti_mda5": groups["anti_mda5"].astype(float),
        "prior_infection": state.prior_infection.astype(float),
        "skin_predominant": groups["skin_predominant"].astype(float),
        "below_target": any_below.astype(float),
        "pm_imnm": groups["pm_imnm"].astype(float),
    }


def propensities(
    catalog: OptionCatalog, eligible: np.ndarray, features: dict[str, np.ndarray], config: PolicyConfig
) -> np.ndarray:
    """Probability of each option at each decision: softmax of configured log-odds over the eligible options,
    mixed with a floor so every eligible option keeps at least `min_probability` (overlap)."""
    n, k = eligible.shape
    logits = np.zeros((n, k))
    for j, opt in enumerate(catalog.options):
        logits[:, j] = config.base.get(opt.name, config.switch_base if opt.kind == "switch" else 0.0)
    for feature, coefs in config.coefficients.items():
        if feature not in features:
            raise KeyError(f"policy.coefficients names an unknown feature {feature!r}; known: {', '.join(features)}")
        for name, coef in coefs.items():
            if name not in catalog.names:
                if name in config.base:  # an option the settings know (e.g. a switch) that this catalogue lacks
                    continue
                raise KeyError(f"policy.coefficients.{feature} names an unknown option {name!r}")
            logits[:, catalog.names.index(name)] += coef * features[feature]
    logits = np.where(eligible, logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.where(eligible, np.exp(logits), 0.0)
    soft = weights / weights.sum(axis=1, keepdims=True)
    n_eligible = eligible.sum(axis=1, keepdims=True)
    floor = config.min_probability
    return np.where(eligible, floor + (1 - floor * n_eligible) * soft, 0.0)


def choose(prob: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index of the option drawn for each row from its probabilities."""
    u = rng.random(len(prob))
    cum = np.cumsum(prob, axis=1)
    picked = (u[:, None] >= cum).sum(axis=1)
    last_possible = prob.shape[1] - 1 - np.argmax(prob[:, ::-1] > 0, axis=1)
    return np.minimum(picked, last_possible)
