"""The settings root: params.yaml validated into frozen sections, unknown keys named, seeds filled in one place."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.settings import (
    DEFAULT_SEED,
    LOGGED_SECTIONS,
    Settings,
    SettingsError,
    load_settings,
    settings_from,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_repository_params_yaml_loads_with_its_own_values() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    settings = load_settings(ROOT / "params.yaml")
    assert settings.seed == raw["seed"]
    assert settings.train.learner == raw["train"]["learner"]
    assert settings.train.booster.n_estimators == raw["train"]["booster"]["n_estimators"]
    assert settings.evaluation.calibration_bins == raw["evaluation"]["calibration_bins"]
    assert settings.report.patient == raw["report"]["patient"]
    assert str(settings.data.today) == raw["data"]["today"]


def test_a_misspelt_top_level_key_is_named_with_a_near_miss() -> None:
    with pytest.raises(SettingsError) as err:
        settings_from({"evaluate": {"calibration_bins": 10}})
    assert str(err.value) == "params.yaml: evaluate: unknown key (did you mean 'evaluation'?)"


def test_a_misspelt_nested_key_is_named_with_its_path() -> None:
    with pytest.raises(SettingsError) as err:
        settings_from({"train": {"boster": {"max_depth": 3}}})
    assert str(err.value) == "params.yaml: train.boster: unknown key (did you mean 'booster'?)"
    with pytest.raises(SettingsError, match=r"^params\.yaml: train\.intervals\.boot_booster\.n_estimator: unknown "
                                            r"key \(did you mean 'n_estimators'\?\)$"):
        settings_from({"train": {"intervals": {"boot_booster": {"n_estimator": 20}}}})


def test_every_problem_is_one_line_naming_the_file_and_the_value() -> None:
    with pytest.raises(SettingsError) as err:
        settings_from({"train": {"booster": {"max_depth": 99}}, "labels": {"response_category": "huge"},
                       "nonsense": 1}, source="exp.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("exp.yaml: ") for line in lines)
    assert any("train.booster.max_depth:" in line and "(got 99)" in line for line in lines)
    assert any("labels.response_category:" in line and "'huge'" in line for line in lines)
    assert any(line.startswith("exp.yaml: nonsense: unknown key") for line in lines)


def test_a_value_outside_a_choice_is_one_line_with_every_allowed_value_and_the_nearest() -> None:
    """`learner` is a union (a learner or `auto`): pydantic said it once per member, under its type's tag."""
    with pytest.raises(SettingsError) as err:
        settings_from({"train": {"learner": "modifer_glm"}, "simulate": {"mode": "trail"}})
    mode, line = sorted(str(err.value).splitlines())
    assert mode == "params.yaml: simulate.mode: not one of observational, trial (got 'trail'; did you mean 'trial'?)"
    assert line.startswith("params.yaml: train.learner: not one of s_learner, ")
    assert "modifier_glm" in line and "auto" in line and "literal" not in line
    assert line.endswith("(got 'modifer_glm'; did you mean 'modifier_glm'?)")


def test_a_missing_file_is_named() -> None:
    with pytest.raises(SettingsError, match="nowhere.yaml: no such settings file"):
        load_settings("/nowhere/nowhere.yaml")


@pytest.mark.parametrize("text", ["", "# all commented out\n", "{}\n"])
def test_a_settings_file_without_settings_is_refused(tmp_path, text) -> None:
    empty = tmp_path / "params.yaml"
    empty.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError, match=r"params\.yaml: holds no settings"):
        load_settings(empty)


def test_every_missing_seed_is_the_top_level_seed() -> None:
    s = settings_from({"seed": 7, "train": {"intervals": {"boot_booster": {"n_estimators": 20}},
                                            "propensity": {"kind": "xgboost"}}})
    seeds = {
        "train": s.train.seed, "train.booster": s.train.booster.seed, "calibration": s.train.calibration.seed,
        "intervals": s.train.intervals.seed, "boot_booster": s.train.intervals.boot_booster.seed,
        "propensity.booster": s.train.propensity.booster.seed, "split": s.split.seed, "simulate": s.simulate.seed,
    }
    assert seeds == dict.fromkeys(seeds, 7)
    # the propensity booster keeps its own lighter defaults; only its seed comes from the root
    assert s.train.propensity.booster.n_estimators == 100
    assert s.train.intervals.boot_booster.n_estimators == 20


def test_an_explicit_seed_wins_and_no_section_defaults_to_zero() -> None:
    s = settings_from({"seed": 7, "split": {"seed": 3}, "train": {"booster": {"seed": 5}}})
    assert (s.split.seed, s.train.booster.seed, s.train.calibration.seed) == (3, 5, 7)
    empty = settings_from({})
    assert empty.seed == DEFAULT_SEED and empty.split.seed == DEFAULT_SEED and empty.simulate.seed == DEFAULT_SEED


def test_response_thresholds_of_training_follow_the_label_category() -> None:
    major = settings_from({"labels": {"response_category": "major"}})
    assert (major.train.response_threshold, major.train.juvenile_response_threshold) == (60.0, 70.0)
    with pytest.raises(SettingsError, match=r"train\.response_threshold: 30 differs from 40"):
        settings_from({"train": {"response_threshold": 30}})


def test_settings_are_frozen_at_every_level() -> None:
    s = settings_from({})
    with pytest.raises(ValidationError):
        s.seed = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.train.booster.max_depth = 9  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.report.patient = "P2"  # type: ignore[misc]


def test_mlflow_params_leave_out_the_patient_of_the_report_section() -> None:
    logged = load_settings(ROOT / "params.yaml").logged_params()
    assert "report" not in logged and "data" not in logged
    assert "simulate" not in logged  # train logs what simulated its data (pipeline.train.simulated_with)
    assert logged["train"]["booster"]["seed"] == logged["seed"]
    assert isinstance(Settings.model_validate(settings_from({}).model_dump()), Settings)


def _declared(stage: str) -> set[str]:
    """The params dvc.yaml's `stage` declares, as written: a section (`data`) or one key (`data.today`)."""
    names = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage].get("params", [])
    return {str(n) for n in names}


def _covers(declared: set[str], key: str) -> bool:
    """Whether declaring `declared` makes DVC rerun the stage when `key` (a dotted path) changes."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in declared for i in range(1, len(parts) + 1))


@pytest.mark.parametrize(("stage", "reads"), [
    ("train", LOGGED_SECTIONS),  # logged as the run's params: an undeclared one goes stale in MLflow
    ("simulate", ("seed", "simulate", "data.today")),  # simulate.today null: the cohort's today is data.today
    ("evaluate", ("evaluation", "data.dir", "labels.horizon_weeks")),
    ("report", ("evaluation.calibration_bins", "evaluation.calibration_strategy", "evaluation.confidence_level",
                "labels.horizon_weeks", "report")),  # evaluation: for a model not evaluated yet
])
def test_every_stage_declares_the_params_it_reads(stage, reads):
    """Found by a review: train logged `evaluation:` and `promote:` as its run's params without declaring them (a
    changed confidence level left the run, and the page reading it, stale), and simulate read `data.today`
    undeclared (changing it left the cohort as it was)."""
    declared = _declared(stage)
    assert [key for key in reads if not _covers(declared, key)] == []


@pytest.mark.parametrize(("text", "message"), [
    (b"seed: 1\nseed: 2\n", r"line 2, column 1: not valid YAML \(key 'seed' is written twice"),  # not last-wins
    (b"train: {learner: auto\n", r"line 2, column 1: not valid YAML"),
    (b"- seed\n- 3\n", r"expected a mapping .* got list"),
    (b"seed: caf\xe9\n", r"not UTF-8 \(byte 9\)"),
    # an unquoted impossible date (found by a review: a traceback from PyYAML's date constructor)
    (b"data:\n  today: 2026-13-01\n", r"line 2, column 10: not valid YAML \('2026-13-01' is not a real date"),
    (b"data: {today: 2026-02-30}\n", r"line 1, column 15: not valid YAML \('2026-02-30' is not a real date \(day"),
])
def test_a_yaml_file_that_cannot_be_read_is_one_refusal_naming_it(tmp_path, text, message):
    """Found by a probe: these were tracebacks, and a key written twice silently took the last value."""
    from pipeline.cli_types import Refusal
    from pipeline.config import ConfigFileError, read_yaml

    path = tmp_path / "params.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigFileError, match=message) as err:
        read_yaml(path)
    assert str(path) in str(err.value) and isinstance(err.value, Refusal)  # the CLI prints it on one line, exit 2


def test_seeds_and_the_auto_learners_candidates_are_checked_when_params_are_read():
    """Found by a probe: a negative seed reached NumPy (traceback), a 1e23 one failed train after the work, and an
    empty candidate list failed train after loading the data."""
    from pipeline.settings import SettingsError, settings_from

    for seed in (-5, 2**40):
        with pytest.raises(SettingsError, match=r"seed") as err:
            settings_from({"seed": seed}, source="params.yaml")
        assert str(err.value).count("\n") == 0  # once, not again for every seed derived from it
    with pytest.raises(SettingsError, match=r"none models a binary outcome"):
        settings_from({"train": {"learner": "auto", "selection": {"candidates": []}}}, source="params.yaml")
    assert settings_from({"seed": 2**32 - 1}, source="params.yaml").seed == 2**32 - 1
    with pytest.raises(SettingsError, match=r"train.safety_weight"):  # `.inf` in YAML: no setting is infinite
        settings_from({"train": {"safety_weight": float("inf")}}, source="params.yaml")


def test_a_today_or_as_of_outside_the_contracts_calendar_is_refused_when_params_are_read():
    """A today before 1900 made validate say 'birth_year must be between 1900 and 1700' for every patient."""
    for key, section in (("today", "data"), ("today", "simulate"), ("as_of", "report")):
        for day in ("1899-12-31", "2262-01-01"):
            with pytest.raises(SettingsError, match=rf"^params\.yaml: {section}\.{key}: .*(1900|2261)"):
                settings_from({section: {key: day}}, source="params.yaml")
    assert str(settings_from({"data": {"today": "1900-01-01"}}).data.today) == "1900-01-01"


def test_a_reference_file_that_breaks_a_rule_is_one_line_naming_file_entry_and_rule(monkeypatch):
    """Found by a probe: a drug alias shared by two drugs silently went to the later one, a duplicate option was
    reported as an unknown guideline option, and pydantic's multi-line dumps named `drugs.0`, not the drug."""
    import copy

    from features.vocabulary import OptionCatalog, Vocabulary
    from pipeline import config
    from pipeline.config import ConfigFileError, load_catalog

    drugs, options = config.load_reference("drugs"), config.load_reference("options")
    shared = copy.deepcopy(drugs)
    shared["drugs"][1]["aliases"] = [*shared["drugs"][1].get("aliases", []), shared["drugs"][0]["generic"]]
    typo = copy.deepcopy(drugs)
    typo["drugs"][1]["dose_unit_typo"] = "mg"
    twice = copy.deepcopy(options)
    twice["options"].append(twice["options"][1])
    for name, raw, parse, message in (
            ("drugs", shared, Vocabulary.from_config, r"drugs\.yaml: alias .* names both .*one drug per alias"),
            ("drugs", typo, Vocabulary.from_config,
             rf"drugs\.yaml: drugs\.1 \({drugs['drugs'][1]['generic']}\)\.dose_unit_typo: Extra inputs"),
            ("options", twice, OptionCatalog.from_config, r"options\.yaml: .*listed twice")):
        monkeypatch.setattr(config, "load_reference", lambda _, raw=raw: raw)
        with pytest.raises(ConfigFileError, match=message):
            load_catalog(name, parse)


def test_a_regimen_lag_of_zero_is_refused_it_would_leak_the_decision() -> None:
    """as_of is the visit day + 1: with no lag, a drug started at the decision visit (the option taken) would be a
    feature of that very decision."""
    with pytest.raises(SettingsError, match=r"features\.regimen_lag_days.*\(got 0\)"):
        settings_from({"features": {"regimen_lag_days": 0}})


@pytest.mark.parametrize(("params", "message"), [
    ({"seed": True}, r"^params\.yaml: seed: a number, not true/false \(got True\)$"),  # once, not per derived seed
    ({"simulate": {"patients": True}}, r"simulate\.patients: a number, not true/false"),
    ({"train": {"booster": {"max_depth": True}}}, r"train\.booster\.max_depth: a number, not true/false"),
    ({"seed": "12"}, r"seed: a number \(unquoted\), not text \(got '12'\)"),
    ({"train": {"interval_calibration": {"enabled": 1}}},
     r"train\.interval_calibration\.enabled: true or false \(unquoted\), not a number or text \(got 1\)"),
    ({"train": {"interval_calibration": {"enabled": "yes"}}}, r"enabled: true or false .*\(got 'yes'\)"),
    ({"features": {"change_windows_days": [91, True]}}, r"features\.change_windows_days: item 1: a number"),
    ({"labels": {"safety_events": []}}, r"labels\.safety_events: Tuple should have at least 1 item"),
    ({"labels": {"cytopenia_min_grade": 2}},
     r"labels\.cytopenia_min_grade: 2 differs from features\.cytopenia_min_grade 3 \(rule: one definition"),
    ({"data": {"today": None}}, r"data\.today: the data's extraction date .* not null \(got None\)"),
    ({"labels": {"window_weeks": 24}}, r"labels.*window_weeks 24 must be below horizon_weeks 24"),
    ({"report": {"patient": " "}}, r"report\.patient"),
])
def test_values_pydantic_would_convert_or_that_mean_nothing_are_refused_naming_the_key(params, message):
    """Found by a review: `seed: true` ran with seed 1, `enabled: 1` or "yes" as true, an empty safety_events
    labelled every decision safe, the two cytopenia grades could disagree, and `data.today: null` reached the
    stages as `--today None`: each was accepted silently."""
    with pytest.raises(SettingsError, match=message):
        settings_from(params)


def test_whole_numbers_for_decimal_settings_and_both_cytopenia_grades_changed_together_are_fine():
    """YAML reads `0` as an int: a decimal setting takes it (only true/false and text are refused)."""
    s = settings_from({"promote": {"ece_tolerance": 0}, "train": {"safety_weight": 1},
                       "features": {"cytopenia_min_grade": 4}, "labels": {"cytopenia_min_grade": 4}})
    assert s.promote.ece_tolerance == 0.0 and isinstance(s.train.safety_weight, float)
    assert s.labels.cytopenia_min_grade == s.features.cytopenia_min_grade == 4
    assert settings_from({}).data.today is None  # left out: the stage's own default
