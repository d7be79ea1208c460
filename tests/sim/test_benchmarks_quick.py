"""The simulator studies' --quick modes run end to end (what CI runs) and say what they measured."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    return tmp_path


def run_script(name, *args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


def test_paper_sim_quick_validates_against_the_artifact_and_compares_policies(results_dir, monkeypatch, capsys):
    run_script("paper_sim.py", "--quick", "--no-progress", monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert "validation: INFaaS++ against the artifact" in out and "issue 12 checks" in out
    data = json.loads((results_dir / "paper_sim_quick.json").read_text())
    assert {(v["trace"], v["rate"]) for v in data["validation"]} == {("M-M", 7.6), ("M-M", 8.0), ("L-L", 2.8), ("L-L", 3.2)}
    assert all(v["art_prefill_p99"] is not None and v["decode_mean"] > 0 for v in data["validation"])
    by = {(r["trace"], r["rate"], r["policy"]): r for r in data["rows"]}
    # Migration is what Llumnix adds: it moves requests, and preemptions cost it less than INFaaS++.
    assert by[("L-L", 3.2, "llumnix")]["migrations"] > 0 and by[("L-L", 3.2, "infaas")]["migrations"] == 0
    assert by[("L-L", 3.2, "llumnix")]["preemption_loss"] < by[("L-L", 3.2, "infaas")]["preemption_loss"]
    assert (results_dir / "paper_sim_quick.png").stat().st_size > 10_000
    assert "issue 12 checks" in (results_dir / "paper_sim_quick.txt").read_text()
