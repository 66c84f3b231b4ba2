"""`escalate report --all`: the model runs once per batch of patients, and every page is the page that patient gets
alone; the index lists every patient, with why one has no page."""

from __future__ import annotations

import os
from datetime import date

import pandas as pd
import pytest

from tests.model.synthetic_escalate import mlflow_store
from tests.model.test_score_job import AS_OF, TODAY, build_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    root = tmp_path_factory.mktemp("report-all")
    mlflow_store(root)  # build_world's root/mlflow.db, copied already migrated
    yield build_world(root)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def test_every_page_of_report_all_is_the_page_the_patient_gets_alone(world, monkeypatch, tmp_path):
    from pipeline import report as R

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.tracking_uri)
    monkeypatch.setattr(R, "PAGES_PER_BATCH", 5)  # several batches of the model, the last one short
    when, today = date.fromisoformat(AS_OF), date.fromisoformat(TODAY)
    site = tmp_path / "site"
    R.run_report(all_patients=True, as_of=when, today=today, data=world.data, out=site, model_dir=tmp_path / "none")
    patients = sorted(pd.read_parquet(world.data / "patients.parquet")["patient_id"].astype(str))
    index = (site / "index.html").read_text(encoding="utf-8")
    written = {p.name for p in site.glob("*.html")} - {"index.html"}
    with_page = [pid for pid in patients if R.page_file_name(pid) in written]
    assert len(with_page) >= 10 and written == {R.page_file_name(pid) for pid in with_page}
    assert all(f'href="{R.page_file_name(pid)}"' in index for pid in with_page)  # the index links every page
    assert all(f">{pid}<" in index for pid in patients)  # and lists every patient, with a page or not
    for pid in (with_page[0], with_page[5], with_page[-1]):  # first and second batch, and the short last one
        alone = tmp_path / f"{pid}.html"
        R.run_report(pid, as_of=when, today=today, data=world.data, out=alone, model_dir=tmp_path / "none")
        assert (site / R.page_file_name(pid)).read_text(encoding="utf-8") == alone.read_text(encoding="utf-8"), pid


def test_a_patient_the_model_fails_on_costs_only_their_page(world, monkeypatch, tmp_path):
    import typer

    from pipeline import report as R
    from pipeline.report import assemble as A

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.tracking_uri)
    monkeypatch.setattr(R, "PAGES_PER_BATCH", 5)
    when, today = date.fromisoformat(AS_OF), date.fromisoformat(TODAY)
    patients = sorted(pd.read_parquet(world.data / "patients.parquet")["patient_id"].astype(str))
    complete = tmp_path / "complete"
    R.run_report(all_patients=True, as_of=when, today=today, data=world.data, out=complete, model_dir=tmp_path / "x")
    paged = [pid for pid in patients if (complete / R.page_file_name(pid)).exists()]
    broken = paged[6]  # in the second batch: its batch run fails, then its own page
    real = A.model_outputs

    def failing(keys, tables, loaded):
        if broken in set(keys["patient_id"].astype(str)):
            raise ValueError("feature build: a record the model cannot read")
        return real(keys, tables, loaded)

    monkeypatch.setattr(R, "model_outputs", failing)
    monkeypatch.setattr(A, "model_outputs", failing)
    site = tmp_path / "site"
    with pytest.raises(typer.Exit) as stop:
        R.run_report(all_patients=True, as_of=when, today=today, data=world.data, out=site, model_dir=tmp_path / "x")
    assert stop.value.exit_code == 1  # a run with a lost page does not look complete
    assert not (site / R.page_file_name(broken)).exists()
    for pid in paged:  # every other page is written, the broken one's batch mates too, and reads as before
        if pid != broken:
            assert (site / R.page_file_name(pid)).read_text(encoding="utf-8") == \
                (complete / R.page_file_name(pid)).read_text(encoding="utf-8"), pid
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "no page: it failed (ValueError: feature build: a record the model cannot read)" in index
    assert all(f">{pid}<" in index for pid in patients)
