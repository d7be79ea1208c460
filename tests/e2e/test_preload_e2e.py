"""The multi-host path: ``dask scheduler --preload llumnix_dask.preload.scheduler`` + ``dask worker --preload
llumnix_dask.preload.worker``, then ``Cluster(address=...)`` and ``llumnix-dask status --scheduler``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from llumnix_dask import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, "the scheduler exited"
        assert time.monotonic() < deadline, "the scheduler did not start"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory):
    sched_file = str(tmp_path_factory.mktemp("dask") / "scheduler.json")
    env = {**os.environ, "DASK_LLUMNIX__POLICY__DISPATCH": "infaas", "DASK_LLUMNIX__ENGINE__NUM_BLOCKS": "128"}
    procs = [subprocess.Popen(["dask", "scheduler", "--preload", "llumnix_dask.preload.scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", sched_file],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_for(sched_file, procs[0])
        time.sleep(0.2)  # the file is written before it is complete on slow machines
        address = json.load(open(sched_file))["address"]
        procs.append(subprocess.Popen(["dask", "worker", address, "--preload", "llumnix_dask.preload.worker", "--nthreads",
                                       "1", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(30)


def test_attach_generates_on_preloaded_workers_with_the_preloaded_policy(scheduler_address):
    with Cluster(address=scheduler_address) as cluster:
        rows = cluster.instances()
        assert len(rows) == 1 and rows["total_blocks"].iloc[0] == 128  # engine config from Dask config
        assert cluster.policy.dispatch == "infaas"  # policy from Dask config
        assert len(cluster.generate("Once upon a time", max_tokens=5, ignore_eos=True, details=True).token_ids) == 5
        with pytest.raises(RuntimeError, match="cannot start workers"):
            cluster.scale(2)
    out = subprocess.run([sys.executable, "-m", "llumnix_dask.cli", "status", "--scheduler", scheduler_address,
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["counters"]["dispatched"] >= 1 and snap["policy"]["dispatch"] == "infaas"
