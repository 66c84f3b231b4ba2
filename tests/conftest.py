"""Shared test builders: paths of the committed fixtures (the repository is all a test may read)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the seed case (the patient this project exists for) as an EHR export in the data contract.
SEED_CASE = ROOT / "tests" / "fixtures" / "seed-case"


@pytest.fixture(scope="session")
def seed_case_dir() -> Path:
    """The committed seed-case contract tables (read-only: copy before editing)."""
    return SEED_CASE
