"""Frozen settings of the literature-calibrated cohort simulator (values and sources: configs/simulator.yaml).

Built at the edge (`pipeline/simulate.py`) from `configs/simulator.yaml` and passed into the pure code, so every
effect size, prevalence and noise level is a visible, sourced number rather than a constant buried in code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from features.config import Frozen

#: patient subgroups an effect modifier can name (computed per decision by `simulator.effects.subgroups`).
Subgroup = Literal[
    "anti_mda5",
    "anti_synthetase",
    "anti_mi2",
    "antibody_negative",
    "juvenile",
    "dermatomyositis",
    "pm_imnm",
    "ild",
    "severe_muscle",
    "skin_predominant",
    "prior_infection",
]


#: a probability or a prevalence, e.g. of ILD with an antibody (a value outside [0, 1] is refused where written).
Probability = Annotated[float, Field(ge=0, le=1)]
#: a weight of a mix, normalised over the mix when drawn (`conventional_mix`, `event_mix`).
Weight = Annotated[float, Field(ge=0)]
#: a shape parameter of a Beta distribution (a, b > 0).
BetaShape = Annotated[float, Field(gt=0)]


class Range(Frozen):
    """A closed interval [low, high] drawn uniformly."""

    low: float
    high: float

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"range high {self.high} is below low {self.low}")
        return self


class DiagnosisProfile(Frozen):
    """What a diagnosis implies for a patient: antibody mix, ILD, cancer, and which tissues are active."""

    share: float = Field(ge=0)
    antibodies: dict[str, Probability] = Field(default_factory=dict, description="antibody → prevalence; rest negative")
    ild: float = Field(ge=0, le=1, description="ILD probability when no antibody sets it")
    cancer: float = Field(ge=0, le=1, description="cancer-associated probability when no antibody sets it")
    juvenile: bool = False
    muscle: Range = Range(low=0.3, high=0.8)
    skin: Range = Range(low=0.2, high=0.7)


class CohortConfig(Frozen):
    """Demographics and disease mix (EuroMyositis; docs/sources.md §5)."""

    female_fraction: float = Field(0.69, ge=0, le=1)
    diagnoses: dict[str, DiagnosisProfile]
    #: antibody → ILD probability overriding the diagnosis default (anti-MDA5: RP-ILD; synthetase: 71 %).
    ild_by_antibody: dict[str, Probability] = Field(default_factory=dict)
    #: antibody → cancer-associated probability overriding the diagnosis default (anti-TIF1γ ~41 %).
    cancer_by_antibody: dict[str, Probability] = Field(default_factory=dict)
    cancer_male_rr: float = Field(1.53, gt=0)
    cancer_ild_rr: float = Field(0.49, gt=0)
    cancer_sites: tuple[str, ...] = ("breast carcinoma", "ovarian carcinoma", "lung carcinoma")
    adult_age_at_diagnosis: Range = Range(low=25, high=75)
    juvenile_age_at_diagnosis: Range = Range(low=5, high=16)
    #: how age at diagnosis spreads over its range: uniform, or a Beta(a, b) shape (a single peak inside the range).
    age_shape: Literal["uniform", "beta"] = "uniform"
    adult_age_beta: tuple[BetaShape, BetaShape] = (3.0, 3.2)
    juvenile_age_beta: tuple[BetaShape, BetaShape] = (2.0, 3.0)
    years_since_diagnosis_max: float = Field(10.0, gt=1)
    weight_kg: dict[str, Range] = Field(default_factory=lambda: {"F": Range(low=50, high=95), "M": Range(low=62, high=110)})
    height_cm: dict[str, Range] = Field(default_factory=lambda: {"F": Range(low=152, high=176), "M": Range(low=165, high=190)})
    mmt8_150_fraction: float = Field(0.15, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> CohortConfig:
        if not self.diagnoses or sum(d.share for d in self.diagnoses.values()) <= 0:
            raise ValueError("cohort.diagnoses needs at least one diagnosis with a positive share")
        for name, d in self.diagnoses.items():
            if sum(d.antibodies.values()) > 1 + 1e-9:
                raise ValueError(f"cohort.diagnoses.{name}.antibodies: prevalences add to more than 1")
        return self


class DoseVariant(Frozen):
    """One way a record writes a drug's regimen."""

    dose: float = Field(gt=0)
    dose_unit: str
    route: str
    interval: str


class WeightRegimen(DoseVariant):
    """A labelled paediatric regimen for a child lighter than `below_kg` (a weight band; None: the last band, every
    weight above the ones before)."""

    below_kg: float | None = Field(None, gt=0)


class DrugRegimens(Frozen):
    """How records write one generic: brand names as clinicians write them, at-target and below-target regimens."""

    written_as: tuple[str, ...] = Field(min_length=1)
    at_target: tuple[DoseVariant, ...] = Field(min_length=1)
    below_target: tuple[DoseVariant, ...] = ()
    #: how a paediatric prescriber writes it for a juvenile DM patient under 18 (per kg or m², docs/sources.md §4);
    #: empty: the adult regimens. The lowest juvenile at-target dose is the paediatric target (a row below it by
    #: more than the tolerance is below target, in the same unit and schedule).
    juvenile_at_target: tuple[DoseVariant, ...] = ()
    juvenile_below_target: tuple[DoseVariant, ...] = ()
    #: the label's weight bands for a child (juvenile DM under 18): an at-target row of a child lighter than a
    #: band's `below_kg` (on the row's start day) is written as that band's regimen instead, lightest band first;
    #: from the last limit on the regimen drawn stands (docs/sources.md §4: abatacept SC, tofacitinib, tocilizumab).
    juvenile_by_weight: tuple[WeightRegimen, ...] = ()
    #: the cap on a child's target intensity (mg/day; IVIG 70 g a course, methotrexate 25 mg a week): a child's
    #: row whose target (its intensity over 1 − shortfall) exceeds it is scaled down by the same factor and
    #: written as a fixed dose (g or mg), so an at-target row sits at the cap and a below-target one stays the
    #: same fraction below it. None: uncapped.
    juvenile_max_mg_per_day: float | None = Field(None, gt=0)
    #: above this body surface (m², on the row's start day) a child's at-target row is the first adult at-target
    #: regimen (rituximab in RIM: 575 mg/m² to 1.5 m², the adult 1 g above). None: no such limit.
    juvenile_adult_above_m2: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _bands_in_order(self) -> DrugRegimens:
        limits = [b.below_kg for b in self.juvenile_by_weight]
        bounded = [x for x in limits if x is not None]
        if None in limits[:-1] or bounded != sorted(bounded) or len(set(bounded)) != len(bounded):
            raise ValueError(f"juvenile_by_weight: below_kg must increase band by band (only the last may be "
                             f"open), got {limits}")
        return self


class BodyConfig(Frozen):
    """Body size over time (v2, docs/simulator.md). `changes: false` keeps weight and height constant (first
    testbed). Adults: weight at diagnosis plus a glucocorticoid gain (a fraction of body weight, normal over
    patients) accruing over the first `steroid_gain_weeks` of induction, then a plateau (Fardet 2020; Morgan 2020,
    §7). Juvenile DM: weight and height follow the APLS / Weech age formulae to age 12, then rise linearly to the
    patient's own adult size at 18 (§7). Each recorded weight adds visit-to-visit noise."""

    changes: bool = False
    steroid_gain_mean: float = Field(0.035, ge=-0.2, le=0.5)
    steroid_gain_sd: float = Field(0.04, ge=0, le=0.5)
    steroid_gain_weeks: float = Field(39.0, gt=0)
    weight_visit_sd_kg: float = Field(0.7, ge=0)
    #: the reference adult the child curves rise to at 18 (the patient's own adult size scales them).
    reference_adult_kg: float = Field(65.0, gt=0)
    reference_adult_cm: float = Field(170.0, gt=0)


class HistoryConfig(Frozen):
    """The treatment history before the first decision point (induction, steroid-sparing agents, biologics)."""

    prednisone_mg_per_kg: Range = Range(low=0.75, high=1.0)
    prednisone_max_mg: float = 80.0
    prednisone_taper_factor: Range = Range(low=0.55, high=0.75)
    prednisone_taper_step_days: Range = Range(low=28, high=84)
    prednisone_floor_mg: tuple[float, ...] = (5.0, 7.5, 10.0, 15.0, 20.0)
    #: steroid dependence: the floor a patient's taper stops at is the quantile Φ(d) of a latent d correlated with
    #: their refractoriness by this much (0: a floor at random), so the record shows refractoriness in part.
    prednisone_floor_refractory_corr: float = Field(0.0, ge=0, le=1)
    #: juvenile DM under 18: induction per kg of current weight and its cap (SHARE JDM, §4); None: the adult rule.
    prednisone_juvenile_mg_per_kg: Range | None = None
    prednisone_juvenile_max_mg: float = 60.0
    hydroxychloroquine_in_dm: float = Field(0.8, ge=0, le=1)
    conventional_start_days: Range = Range(low=90, high=365)
    conventional_mix: dict[str, Weight] = Field(
        default_factory=lambda: {"mycophenolate": 0.5, "methotrexate": 0.3, "azathioprine": 0.2})
    conventional_switch: float = Field(0.35, ge=0, le=1)
    conventional_switch_after_days: Range = Range(low=180, high=365)
    #: probability that a patient received each advanced agent before the first decision point.
    prior_advanced: dict[str, Probability] = Field(
        default_factory=lambda: {"ivig": 0.35, "rituximab": 0.25, "tocilizumab": 0.06})
    prior_advanced_start_days: Range = Range(low=240, high=900)
    #: log-odds of each prior advanced agent per SD of the patient's refractoriness latent (refractory patients
    #: have been through more agents before the first decision: history shows refractoriness in part).
    prior_advanced_refractory_log_or: float = 0.0
    #: rituximab given as one course only (row ends after day 15) rather than an ongoing 6-monthly schedule.
    rituximab_single_course: float = Field(0.3, ge=0, le=1)
    below_target_fraction: float = Field(0.3, ge=0, le=1)
    induction_decay_days: Range = Range(low=25, high=45)
    remission_muscle: Range = Range(low=0.0, high=0.07)
    remission_skin: Range = Range(low=0.0, high=0.08)
    #: extra months of quiet disease between the last history change (+ stable period) and the flare.
    remission_mean_days: float = Field(365.0, gt=0)
    stable_before_flare_days: int = Field(100, ge=0)
    active_visit_interval_days: Range = Range(low=30, high=91)
    quiet_visit_interval_days: Range = Range(low=91, high=182)
    first_decision_before_today_days: Range = Range(low=182, high=600)
    regimens: dict[str, DrugRegimens]


class MeasurementConfig(Frozen):
    """How latent muscle (m) and skin (s) activity in [0, 1] become IMACS core set measures, and their noise."""

    physician_global: tuple[float, float] = (0.55, 0.45)
    physician_global_sd: float = 0.5
    patient_global: tuple[float, float] = (0.45, 0.35)
    patient_global_offset: Range = Range(low=0.0, high=1.5)
    patient_global_sd: float = 0.8
    mmt8_loss_at_full_activity: float = Field(0.45, gt=0, le=1)
    mmt8_sd_fraction: float = 0.02
    haq: tuple[float, float] = (2.2, 0.3)
    haq_offset: Range = Range(low=0.0, high=0.5)
    haq_sd: float = 0.12
    extramuscular_global: tuple[float, float, float] = (0.15, 0.65, 0.12)
    extramuscular_global_sd: float = 0.5
    enzyme_ratio_at_rest: float = 0.6
    enzyme_gain: dict[str, Range] = Field(default_factory=dict, description="log(value/ULN) gain per unit m")
    enzyme_log_sd: float = 0.12
    enzyme_uln: dict[str, tuple[float, ...]] = Field(default_factory=dict)
    enzyme_measured: dict[str, Probability] = Field(default_factory=dict, description="patient-level panel probability")
    cdasi_activity_at_full: float = 60.0
    cdasi_activity_sd: float = 2.0
    cdasi_damage: Range = Range(low=0, high=12)
    core_missing: float = Field(0.03, ge=0, lt=1, description="a core set measure missing at a routine visit")
    #: a core set measure missing at an outcome visit (which is also the next decision visit when disease is active).
    core_missing_outcome: float = Field(0.0, ge=0, lt=1)
    #: share of routine and outcome visits at which CDASI (activity and damage) is recorded at all.
    cdasi_recorded: float = Field(1.0, gt=0, le=1)
    other_missing: float = Field(0.05, ge=0, lt=1, description="a non-core measure missing at a visit")


class Modifier(Frozen):
    """Multiplies a drug's muscle / skin effect (and its onset time constant) in one subgroup."""

    when: Subgroup
    muscle: float = Field(1.0, ge=0)
    skin: float = Field(1.0, ge=0)
    onset: float = Field(1.0, gt=0)


class DrugEffect(Frozen):
    """Fraction of latent activity a drug removes at full onset, with kinetics 1 − exp(−t/onset_weeks)."""

    muscle: float = Field(0.0, ge=0, le=0.95)
    skin: float = Field(0.0, ge=0, le=0.95)
    onset_weeks: float = Field(8.0, gt=0)
    modifiers: tuple[Modifier, ...] = ()


class OptimiseEffect(Frozen):
    """Raising below-target doses: effect per unit of shortfall (1 − dose/target) for each generic."""

    potency: dict[str, float] = Field(default_factory=dict)
    onset_weeks: float = Field(6.0, gt=0)


#: events an interruption for an adverse event can write (codes of the contract's events table).
HARM_EVENTS: tuple[str, ...] = ("serious_infection", "opportunistic_infection", "cytopenia", "thromboembolism", "infusion_reaction")
#: the events that make the safety outcome (serious infection or grade ≥ 3 cytopenia; params.yaml safety_events).
SAFETY_EVENTS: tuple[str, ...] = ("serious_infection", "opportunistic_infection", "cytopenia")


class HarmConfig(Frozen):
    """Adding a drug can lower the chance of response: a serious infection or toxicity interrupts it early (the
    new effect is lost) and the disease flares. Off by default (no interruption)."""

    #: generic → probability that the added drug is stopped for an adverse event within the horizon.
    interruption: dict[str, float] = Field(default_factory=dict)
    #: relative rise of latent activity after an interruption (the flare) [assumption].
    flare: float = Field(0.0, ge=0, le=1)
    #: generic → the adverse event that stopped it, as the record's events table writes it: weights over
    #: HARM_EVENTS; a generic not named here uses `safety.event_mix`. A serious or opportunistic infection or a
    #: cytopenia (grade 3–4) counts toward the safety outcome; a thrombo-embolism or an infusion reaction does not.
    events: dict[str, dict[str, float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> HarmConfig:
        bad = {g: p for g, p in self.interruption.items() if not 0 <= p < 1}
        if bad:
            raise ValueError(f"effects.harm.interruption: probabilities must be in [0, 1), got {bad}")
        for generic, mix in self.events.items():
            unknown = sorted(set(mix) - set(HARM_EVENTS))
            if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
                raise ValueError(
                    f"effects.harm.events.{generic}: weights ≥ 0 (not all 0) over {', '.join(HARM_EVENTS)}; "
                    f"got {mix}" + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                )
        return self


class PrednisoneRule(Frozen):
    """Prednisone after a decision follows the latent disease activity A = max(m, s) (issue 17; sources in
    docs/sources.md §7, the rule in docs/simulator.md). At the horizon, a relative fall of A by at least
    `taper_if_fall` has let the clinician taper (steps of `step_mg`, `large_step_mg` above `large_step_above_mg`,
    every `step_days` from `first_step_days` to the last review `review_before_outcome_days` before the outcome
    visit, never below `floor_mg`); a relative rise by at least `flare_if_rise` is a flare, treated from
    `flare_day` with max(`flare_min_mg`, `flare_multiplier` × dose) capped at `max_mg`; else the dose stays.
    Steroid sparing = prednisone ≤ `sparing_mg` at the horizon without a flare. `adjusts: false` keeps the dose
    unchanged in the record (the truth still applies the same rule with no adjustment)."""

    adjusts: bool = False
    taper_if_fall: float = Field(0.2, gt=0, lt=1)
    flare_if_rise: float = Field(0.25, gt=0)
    first_step_days: int = Field(28, ge=1)
    step_days: int = Field(28, ge=1)
    step_mg: float = Field(2.5, gt=0)
    large_step_mg: float = Field(5.0, gt=0)
    large_step_above_mg: float = Field(20.0, ge=0)
    floor_mg: float = Field(5.0, ge=0)
    review_before_outcome_days: int = Field(28, ge=0)
    flare_day: int = Field(56, ge=1)
    flare_multiplier: float = Field(2.0, ge=1)
    flare_min_mg: float = Field(20.0, ge=0)
    max_mg: float = Field(60.0, gt=0)
    sparing_mg: float = Field(7.5, ge=0)
    #: A below this counts as this when the relative change is taken (quiet disease: no division by ~0).
    activity_floor: float = Field(0.05, gt=0)


class EffectsConfig(Frozen):
    """Treatment effects on latent activity (docs/sources.md §3; uncontrolled results shrunk to placebo)."""

    #: what every arm gets: placebo response and regression to the mean of a flare.
    background: DrugEffect
    drugs: dict[str, DrugEffect]
    optimise: OptimiseEffect
    severe_muscle_threshold: float = Field(0.6, ge=0, le=1)
    latent_sd: float = Field(0.07, ge=0, description="sd of follow-up latent activity (shared by all options)")
    #: sd of the log of a per-draw responsiveness multiplier (mean 1) on every effect: responders and non-responders.
    responsiveness_log_sd: float = Field(0.6, ge=0)
    #: share of draws in which a newly started treatment does nothing (primary non-response).
    non_responder_fraction: float = Field(0.0, ge=0, lt=1)
    #: share of the background response (placebo, regression to the mean, still-accruing drugs) that a primary
    #: non-responder draw keeps: 1 = non-responders fare like the average placebo patient, 0 = no improvement.
    non_responder_background: float = Field(1.0, ge=0, le=1)
    max_effect: float = Field(0.95, gt=0, le=1)
    #: share of the variance of the (non-)responder draw that is a persistent per-patient latent (refractoriness):
    #: 0 = drawn afresh at each decision, 1 = the same patients never respond. It keeps the marginal rate.
    refractory_weight: float = Field(0.0, ge=0, le=1)
    #: share of the variance of the option's responder draw that is a per-patient, per-drug latent (a patient may
    #: respond to B-cell depletion and not to IVIG): which option is best then differs between patients.
    drug_specific_weight: float = Field(0.0, ge=0, le=1)
    #: sd of the log of a per-patient multiplier (mean 1) on every effect, falling with refractoriness.
    refractory_effect_log_sd: float = Field(0.0, ge=0)
    #: refractoriness deepens (in SD of the latent) after each decision whose option brought no response: damage
    #: accrues while disease stays active, and damage slows the next response (docs/simulator.md; 0 = static).
    refractory_gain_per_failure: float = Field(0.0, ge=0)
    harm: HarmConfig = HarmConfig()
    #: a switch (issue 17) stops a current drug: its accrued effect fades linearly over this many weeks after the
    #: change (generic → weeks; a generic not listed fades over `washout_default_weeks`).
    washout_weeks: dict[str, float] = Field(default_factory=dict)
    washout_default_weeks: float = Field(8.0, gt=0)


class SafetyConfig(Frozen):
    """Logistic model of serious infection or grade ≥ 3 cytopenia within the reference horizon."""

    intercept: float
    reference_weeks: float = Field(24.0, gt=0)
    prednisone_over_10mg: float = 0.0
    drug: dict[str, float] = Field(default_factory=dict, description="generic → log-odds when on it")
    age_per_decade_over_50: float = 0.0
    ild: float = 0.0
    prior_infection: float = 0.0
    event_mix: dict[str, Weight] = Field(
        default_factory=lambda: {"serious_infection": 0.6, "opportunistic_infection": 0.15, "cytopenia": 0.25})
    #: IVIG thrombo-embolism within the horizon among all IVIG-treated patients (ProDERM 6.3 %), those that stopped
    #: IVIG (`effects.harm`) included — recorded, but not part of the safety outcome.
    ivig_thromboembolism: float = Field(0.063, ge=0, le=1)
    background_infection_per_year: float = Field(0.05, ge=0)
    background_cytopenia_per_year: float = Field(0.06, ge=0)
    background_cytopenia_grades: tuple[float, float, float, float] = (0.5, 0.3, 0.15, 0.05)


class PolicyConfig(Frozen):
    """The simulated clinician: option log-odds by patient features (confounding by indication), with overlap."""

    min_probability: float = Field(0.02, ge=0, lt=0.14)
    base: dict[str, float]
    coefficients: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="feature → option → log-odds per unit of the feature"
    )
    start_delay_days: Range = Range(low=1, high=21)
    #: log-odds of a switch option (kind: switch) that `base` does not name: clinicians also switch (issue 17).
    switch_base: float = -1.5


class DecisionRule(Frozen):
    """When a visit is a decision point and how follow-up unfolds after it."""

    physician_global_min_cm: float = 2.0
    cdasi_activity_min: float = 14.0
    mmt8_below_fraction: float = 0.9
    stable_days: int = 91
    min_gap_weeks: float = 20.0
    #: hard cap on decision rounds; with the first decision ≤ 600 days before today at most 4 fit anyway.
    max_decisions: int = Field(4, ge=1)
    horizon_weeks: int = 24
    outcome_window_days: int = 14
    interim_visit_days: Range = Range(low=30, high=91)
    interim_last_day: int = 112
    loss_to_follow_up: float = Field(0.1, ge=0, le=1)
    #: log-odds of loss to follow-up when the option taken did not work (missing not at random) [assumption].
    loss_if_no_response_log_or: float = 0.0


class TrialScreening(Frozen):
    """A trial's inclusion criteria, applied to the core set MEASURED at a screening visit (not to the latent
    activity): MMT-8 at most `mmt8_max` and at least `min_items` of the listed abnormalities. MMT-8 limits are in
    units of a 0–`mmt8_scale` score, the scale the trial used (every enrolled patient is scored on it).

    The screening visit falls `weeks_before_baseline` before the baseline visit. Each visit's activity is the
    patient's level plus a visit-to-visit fluctuation of SD `effects.latent_sd`; the screening visit's fluctuation
    carries into the baseline visit with correlation exp(−Δ / `flare_decay_weeks`) (Δ the weeks between them) and
    is gone by the outcome visit. Enrolling on measured values therefore selects patients seen at a flare, who
    regress toward their level in every arm (regression to the mean), as trial placebo arms do."""

    mmt8_scale: float = Field(150.0, gt=0)
    mmt8_max: float = Field(135.0, gt=0, description="MMT-8 at most this (in mmt8_scale units)")
    min_items: int = Field(3, ge=0, le=6, description="and at least this many of the six abnormalities below")
    mmt8_item_max: float = Field(125.0, gt=0)
    physician_global_min_cm: float = 2.0
    patient_global_min_cm: float = 2.0
    haq_min: float = 0.5
    enzyme_uln_ratio_min: float = Field(1.3, gt=0, description="any measured muscle enzyme at least this × ULN")
    extramuscular_global_min_cm: float = 2.0
    weeks_before_baseline: Range = Range(low=1, high=4)
    flare_decay_weeks: float = Field(6.0, gt=0)
    max_candidates_per_patient: int = Field(50, ge=1, description="screen at most this many candidates per enrolled patient")


class TrialHistory(Frozen):
    """A trial's inclusion criteria on the treatment history the record shows before the baseline visit: the number
    of distinct prior advanced agents (`history.prior_advanced`: IVIG, rituximab, tocilizumab) and of steroid-sparing
    agents (`history.conventional_mix`), the prednisone dose the taper stopped at (steroid dependence) and the years
    since diagnosis. Refractoriness shows in that history (`history.prior_advanced_refractory_log_or`,
    `prednisone_floor_refractory_corr`), so trials that enrolled by different histories enrol different
    refractoriness. Candidates are drawn `candidates_per_patient` × n at once (at least 256); the first n who qualify are
    enrolled."""

    min_prior_advanced: int = Field(0, ge=0)
    max_prior_advanced: int | None = Field(None, ge=0)
    min_conventional: int = Field(0, ge=0, description="at least this many distinct steroid-sparing agents tried")
    min_prednisone_mg: float = Field(0.0, ge=0, description="prednisone at baseline at least this (mg/day)")
    max_prednisone_mg: float | None = Field(None, ge=0)
    min_years_since_diagnosis: float = Field(0.0, ge=0)
    washout_days: dict[str, int] = Field(
        default_factory=dict,
        description="per prior advanced agent: no exposure (an ongoing one counts) within this many days before baseline")
    candidates_per_patient: int = Field(8, ge=1, description="candidates drawn per enrolled patient")

    @model_validator(mode="after")
    def _check(self) -> TrialHistory:
        if self.max_prior_advanced is not None and self.max_prior_advanced < self.min_prior_advanced:
            raise ValueError(f"trial history: max_prior_advanced {self.max_prior_advanced} < min_prior_advanced "
                             f"{self.min_prior_advanced}")
        negative = {agent: days for agent, days in self.washout_days.items() if days < 0}
        if negative:
            raise ValueError(f"trial history: washout_days {negative} must be ≥ 0 days")
        if self.max_prednisone_mg is not None and self.max_prednisone_mg < self.min_prednisone_mg:
            raise ValueError(f"trial history: max_prednisone_mg {self.max_prednisone_mg} < min_prednisone_mg "
                             f"{self.min_prednisone_mg}")
        return self


class TrialPopulation(Frozen):
    """One emulated trial's population: who is enrolled, when outcomes are read, and how much the background
    (placebo response, regression to the mean, background therapy) helps, relative to the refractory default.

    Without `screening` the latent activity is floored at `min_muscle` / `min_skin`; with it, patients of the
    diagnosis are enrolled by the trial's criteria on measured values (`TrialScreening`) and the floors are unused."""

    diagnosis: str = "adult_dermatomyositis"
    horizons_weeks: tuple[int, ...] = Field((16, 24), min_length=1)
    min_muscle: float = Field(0.35, ge=0, le=1, description="inclusion: latent muscle activity at least this")
    min_skin: float = Field(0.25, ge=0, le=1, description="inclusion: latent skin activity at least this")
    screening: TrialScreening | None = None
    history: TrialHistory | None = None
    #: multiplies `effects.background` (both tissues) for every arm of this trial; 1 = the observational cohort.
    background_scale: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> TrialPopulation:
        if any(h <= 0 for h in self.horizons_weeks):
            raise ValueError(f"trial horizons must be positive weeks, got {self.horizons_weeks}")
        return self


#: the ratings an expectation (placebo) response moves: the assessor's and the patient's, lower is better.
EXPECTATION_MEASURES: tuple[str, ...] = ("physician_global", "patient_global", "extramuscular_global", "haq")


class TrialExpectation(Frozen):
    """The expectation (placebo) response of a randomised trial: at every follow-up visit of every arm of every
    emulated trial, the subjective core-set ratings (`measures`) read `relative` lower than the patient's activity
    gives (rating × (1 − relative), re-rounded to the instrument's resolution). Trial mode only: the observational
    cohort's records have no such response."""

    relative: float = Field(0.0, ge=0, lt=1, description="relative improvement of the subjective ratings at follow-up")
    measures: tuple[str, ...] = EXPECTATION_MEASURES

    @model_validator(mode="after")
    def _check(self) -> TrialExpectation:
        unknown = [m for m in self.measures if m not in EXPECTATION_MEASURES]
        if unknown:
            raise ValueError(
                f"trial.expectation.measures: {', '.join(unknown)} not among the subjective ratings "
                f"({', '.join(EXPECTATION_MEASURES)})"
            )
        return self


class TrialConfig(Frozen):
    """Trial-emulation mode: options randomised among the eligible, one decision per patient, and a named
    population per published trial (each calibration anchor is reproduced in the population of its trial)."""

    visit_window_days: int = 7
    start_delay_days: Range = Range(low=1, high=3)
    expectation: TrialExpectation = TrialExpectation()
    default_population: str = "proderm"
    populations: dict[str, TrialPopulation] = Field(default_factory=lambda: {"proderm": TrialPopulation()})

    @model_validator(mode="after")
    def _check(self) -> TrialConfig:
        if self.default_population not in self.populations:
            raise ValueError(
                f"trial.default_population {self.default_population!r} is not among trial.populations "
                f"({', '.join(self.populations) or 'none'})"
            )
        return self

    def population(self, name: str | None = None) -> TrialPopulation:
        """The named trial population (the default one when `name` is None); unknown names are an error."""
        key = self.default_population if name is None else name
        if key not in self.populations:
            raise ValueError(f"unknown trial population {key!r}; configured: {', '.join(self.populations)}")
        return self.populations[key]


class TruthConfig(Frozen):
    """Monte Carlo settings of the true probabilities."""

    mc_draws: int = Field(200, ge=10)
    response_category: Literal["minimal", "moderate", "major"] = "moderate"
    chunk_rows: int = Field(2_000_000, ge=10_000, description="pairs scored per batch (memory bound)")


class SimulatorConfig(Frozen):
    """Everything the simulator needs besides the drug vocabulary and option catalogue."""

    cohort: CohortConfig
    body: BodyConfig = BodyConfig()
    history: HistoryConfig
    measurement: MeasurementConfig
    effects: EffectsConfig
    safety: SafetyConfig
    policy: PolicyConfig
    decisions: DecisionRule = DecisionRule()
    prednisone: PrednisoneRule = PrednisoneRule()
    trial: TrialConfig = TrialConfig()
    truth: TruthConfig = TruthConfig()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SimulatorConfig:
        """Validate the parsed `configs/simulator.yaml` mapping."""
        return cls.model_validate(config)
