"""Shared test builders: paths of the committed fixtures (the repository is all a test may read)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the seed case (the patient this project exists for) as an EHR export in the data contract.
SEED_CASE = ROOT / "tests" / "fixtures" / "seed-case"


def pytest_configure(config: pytest.Config) -> None:
    """The library notices the CLI silences (`pipeline.config.LIBRARY_NOTICES`) are silenced in tests too, so the
    warnings summary lists only warnings worth acting on."""
    from pipeline.config import LIBRARY_NOTICES

    for message, category in LIBRARY_NOTICES:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


@pytest.fixture(scope="session")
def seed_case_dir() -> Path:
    """The committed seed-case contract tables (read-only: copy before editing)."""
    return SEED_CASE


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """In CI (`CI=true`) a skipped test fails: CI must run every test (browser, Spark, Linux-only), so a missing
    part such as Chromium or PySpark is an install step to fix, not a test to lose quietly."""
    _fail_skips_in_ci((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    """The same for a whole module skipped at collection (`pytest.importorskip` at the top of a module)."""
    _fail_skips_in_ci((yield).get_result())


def _fail_skips_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"


@pytest.fixture()
def read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder this user may not write: mode 0o500, and `os.access` denies writes there too, because root (CI)
    may write anywhere whatever the mode says."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_access = os.access

    def access(path: os.PathLike[str] | str, mode: int, **kwargs: object) -> bool:
        inside = Path(path).absolute().is_relative_to(locked)
        return False if inside and mode & os.W_OK else real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    yield locked
    locked.chmod(0o700)
