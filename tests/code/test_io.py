"""Output files: written atomically, with the permissions any other file the user writes gets."""

from __future__ import annotations

import stat

import pandas as pd

from pipeline.io import write_json, write_parquet


def test_outputs_get_the_permissions_a_plain_open_gives_never_owner_only(tmp_path):
    """Found by a walkthrough: half the stage outputs (manifest, parts, split, metrics) were -rw------- because the
    atomic writer kept mkstemp's mode, so a colleague in the group could not read them."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = stat.S_IMODE(plain.stat().st_mode)
    write_json({"a": 1}, tmp_path / "out.json")
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "out.parquet")
    for name in ("out.json", "out.parquet"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_rewriting_a_file_keeps_the_permissions_its_owner_set(tmp_path):
    """A file locked to its owner (patient data) stays so when a stage writes it again."""
    target = tmp_path / "out.json"
    write_json({"a": 1}, target)
    target.chmod(0o600)
    write_json({"a": 2}, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
