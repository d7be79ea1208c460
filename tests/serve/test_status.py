"""``llumnix-dask status`` reads well in an 80-column terminal."""

from __future__ import annotations

from rich.console import Console

from llumnix_dask.serve.commands import status_renderables


def test_status_fits_80_columns_and_shows_whole_instance_ids():
    stats = {"count": 12, "mean": 0.0123, "p99": 0.0456}
    snap = {
        "policy": {"dispatch": "llumnix", "migration_enabled": True, "scaling_enabled": False},
        "counters": {"dispatched": 1234, "finished": 1200, "migrations": 56, "migrations_failed": 2},
        "instances": [
            {"instance_id": f"instance-10.0.0.{i}:40123-r2", "device": "cuda (0)", "num_running": 48,
             "num_waiting": 130, "kv_usage": 0.91, "freeness": -1234.5, "dispatched": 99999,
             "migrating": i == 1, "terminating": i == 2}
            for i in range(3)
        ],
        "latency": {p: {"ttft": stats, "tpot": stats} for p in ("all", "normal", "high")},
    }
    console = Console(width=80, record=True)
    for part in status_renderables(snap):
        console.print(part)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for i in range(3):
        assert f"instance-10.0.0.{i}:40123-r2" in text
    assert "draining" in text and "migrating" in text and "migrations 56 (2 failed)" in text
