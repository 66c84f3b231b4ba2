"""The literature-calibrated cohort simulator (pure: returns DataFrames; see docs/architecture.md).

`simulate_cohort(n_patients, seed, config, vocabulary, catalog, today, mode)` → `SimulatedCohort` with the four
contract tables (patients, regimens, assessments, events) and the truth (decisions, outcomes).
"""

from simulator.config import SimulatorConfig
from simulator.engine import SimulatedCohort, simulate_cohort

__all__ = ["SimulatedCohort", "SimulatorConfig", "simulate_cohort"]
