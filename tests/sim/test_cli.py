import json

from typer.testing import CliRunner

from llumnix_dask.cli import app

runner = CliRunner()


def test_sim_command_prints_table_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["sim", "--trace", "S-S", "--rate", "20", "--requests", "200", "--instances", "2",
                              "--arrival", "gamma", "--cv", "2", "--high-priority", "0.1", "--out", str(out),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "prefill P99" in res.output and "high" in res.output
    data = json.loads((out / "sim.json").read_text())
    assert data["overall"]["requests"] == 200 and (out / "sim_cdf.png").stat().st_size > 1000


def test_sim_command_runs_a_profile_under_either_preset(tmp_path):
    for preset, threshold in (("paper", 10.0), ("default", 60.0)):
        out = tmp_path / preset
        res = runner.invoke(app, ["sim", "--trace", "M-M", "--rate", "4", "--requests", "60", "--instances", "2",
                                  "--preset", preset, "--profile", "h100-llama-3-8b", "--out", str(out),
                                  "--no-progress"])
        assert res.exit_code == 0, res.output
        cfg = json.loads((out / "sim.json").read_text())["config"]
        assert cfg["blocks_per_instance"] == 24_800 and cfg["policy"]["migrate_in_freeness"] == threshold
    res = runner.invoke(app, ["sim", "--requests", "10", "--no-progress", "--profile", "tpu"])
    assert res.exit_code == 2 and "unknown profile" in res.output


def test_sim_command_with_scaling(tmp_path):
    res = runner.invoke(app, ["sim", "--trace", "S-S", "--rate", "5", "--requests", "100", "--instances", "2",
                              "--scale-band", "25,75", "--max-instances", "4", "--no-progress"])
    assert res.exit_code == 0, res.output


def test_sim_command_rejects_bad_input():
    for args, msg in [
        (["--rate", "-1"], "rate"),
        (["--policy", "fastest"], "unknown policy"),
        (["--scale-band", "80,20"], "x must be <= y"),
        (["--scale-band", "80"], "x,y"),
        (["--arrival", "uniform"], "arrival"),
        (["--trace", "nope"], "neither a preset"),
        (["--preset", "fast"], "unknown preset"),
    ]:
        res = runner.invoke(app, ["sim", "--requests", "10", "--no-progress", *args])
        assert res.exit_code == 2, args
        assert msg in res.output, (args, res.output)
