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
