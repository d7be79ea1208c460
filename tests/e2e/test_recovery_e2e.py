"""Faults on a real LocalCluster: an instance killed mid-decode (and mid-migration), migrations at random
points while the CPU is loaded. No request is lost or hangs, every one yields its unmigrated tokens, no KV
block leaks on the survivors, and the cluster returns to its size by itself."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time

import pytest
from e2e_helpers import BACKENDS, for_backend

from llumnix_dask import Cluster, EngineConfig, FrontendConfig, PolicyConfig
from llumnix_dask.client.errors import InstanceLost

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ENGINE = EngineConfig(num_blocks=256, max_batch_size=16)
PROMPTS = [f"story {i}: once upon a time" for i in range(6)]


def wait_until(cond, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)


def sampling(i: int) -> dict:
    """Greedy for even i, seeded sampling for odd i: both must continue exactly after a fault."""
    return {"max_tokens": 400, "ignore_eos": True, **({"temperature": 1.0, "seed": 100 + i} if i % 2 else {})}


class Streams:
    """Streams running in threads, recording every chunk."""

    def __init__(self, cluster, prompts):
        self.chunks = {i: [] for i in range(len(prompts))}
        self.errors = {}
        self.threads = [threading.Thread(target=self._run, args=(cluster, i, p), daemon=True)
                        for i, p in enumerate(prompts)]
        for t in self.threads:
            t.start()

    def _run(self, cluster, i, prompt):
        try:
            for chunk in cluster.stream(prompt, details=True, **sampling(i)):
                self.chunks[i].append(chunk)
        except Exception as exc:  # recorded, asserted on by the test
            self.errors[i] = exc

    def tokens(self, i):
        return [t for c in self.chunks[i] for t in c.token_ids]

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [i for i, t in enumerate(self.threads) if t.is_alive()]  # hung


def worker_pids(cluster) -> dict[str, int]:
    """instance id -> pid of its worker process."""
    pids = cluster.client.run(os.getpid)
    return {iid: pids[row["address"]] for iid, row in cluster.instances().iterrows()}


def assert_idle_without_leaks(cluster):
    wait_until(lambda: int(cluster.instances()[["num_running", "num_waiting"]].sum().sum()) == 0, what="idle")
    wait_until(lambda: int(cluster.instances()["used_blocks"].sum()) == 0, what="every KV block free")


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request):
    engine = for_backend(request.param, ENGINE)
    with Cluster(3, engine=engine, policy=PolicyConfig(migration_enabled=False), dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def references(cluster):
    return [cluster.generate(p, details=True, **sampling(i)).token_ids for i, p in enumerate(PROMPTS)]


def test_requests_of_a_killed_instance_continue_elsewhere_with_their_tokens(cluster, references):
    pids = worker_pids(cluster)
    streams = Streams(cluster, PROMPTS)
    wait_until(lambda: all(len(streams.tokens(i)) >= 10 for i in range(len(PROMPTS))), what="every stream decoding")
    holders = [streams.chunks[i][-1].instance_id for i in range(len(PROMPTS))]
    victim = max(set(holders), key=holders.count)
    os.kill(pids[victim], signal.SIGKILL)
    assert streams.join(300) == [], "a stream hung"
    assert streams.errors == {}
    for i in range(len(PROMPTS)):
        assert streams.tokens(i) == references[i], f"request {i} diverged after the recovery"
        assert [c.index for c in streams.chunks[i]] == sorted({c.index for c in streams.chunks[i]})  # each once
    moved = [i for i, h in enumerate(holders) if h == victim]
    assert moved and all(streams.chunks[i][-1].instance_id != victim for i in moved)
    assert cluster.frontend.health.num_recovered >= len(moved)
    # The killed worker comes back (as a new instance) and the survivors hold no stray blocks.
    wait_until(lambda: len(cluster.instances()) == 3 and victim not in cluster.instances().index, timeout=180,
               what="the cluster back at 3 instances")
    assert_idle_without_leaks(cluster)


def test_an_instance_killed_mid_migration_loses_nothing(cluster, references):
    for side in ("source", "destination"):
        pids = worker_pids(cluster)
        streams = Streams(cluster, PROMPTS[:2])
        wait_until(lambda: all(len(streams.tokens(i)) >= 20 for i in range(2)), what="decoding")
        rid = streams.chunks[0][0].request_id
        src = streams.chunks[0][-1].instance_id
        dst = next(i for i in cluster.instances().index if i != src)
        pid = pids[src if side == "source" else dst]
        migration = threading.Thread(target=lambda: cluster.migrate(rid, dst=dst), daemon=True)
        migration.start()
        os.kill(pid, signal.SIGKILL)  # somewhere in the migration: before, during or after its stages
        migration.join(120)
        assert streams.join(300) == [], f"a stream hung ({side} killed)"
        assert streams.errors == {}
        assert [streams.tokens(i) for i in range(2)] == references[:2], side
        wait_until(lambda: len(cluster.instances()) == 3, timeout=180, what="the cluster back at 3 instances")
        assert_idle_without_leaks(cluster)


def test_with_recovery_off_the_request_ends_with_a_clear_error():
    frontend = FrontendConfig(recover_requests=False)
    with Cluster(2, engine=ENGINE, frontend=frontend, policy=PolicyConfig(migration_enabled=False),
                 dashboard_address=None) as c:
        pids = worker_pids(c)
        streams = Streams(c, PROMPTS[:1])
        wait_until(lambda: len(streams.tokens(0)) >= 5, what="decoding")
        os.kill(pids[streams.chunks[0][-1].instance_id], signal.SIGKILL)
        assert streams.join(120) == []
        assert isinstance(streams.errors.get(0), InstanceLost)
        assert "left the cluster" in str(streams.errors[0]) and "recovery is off" in str(streams.errors[0])


def _busy_loop(stop):
    while not stop.is_set():
        pass


def test_sixty_requests_migrated_at_random_points_under_cpu_load_all_finish_exactly(cluster):
    rng = random.Random(7)
    prompts = [f"request {i} about rivers" for i in range(60)]
    kinds = [{"max_tokens": 48, "ignore_eos": True, **({"temperature": 1.0, "seed": i} if i % 2 else {})}
             for i in range(60)]
    references = [cluster.submit(p, **k) for p, k in zip(prompts, kinds)]
    references = [f.result(timeout=300).token_ids for f in references]
    stop = multiprocessing.Event()
    loads = [multiprocessing.Process(target=_busy_loop, args=(stop,), daemon=True) for _ in range(2)]
    for p in loads:
        p.start()
    try:
        hung, results, outcomes = [], {}, []
        for wave in range(0, 60, 6):  # six concurrent requests at a time
            chunks = {i: [] for i in range(wave, wave + 6)}
            points = {i: rng.randrange(1, 40) for i in chunks}

            def run(i):
                for chunk in cluster.stream(prompts[i], details=True, **kinds[i]):
                    chunks[i].append(chunk)
                    if len(chunks[i]) == points[i]:
                        outcomes.append(cluster.migrate(chunk.request_id))

            threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in chunks]
            for t in threads:
                t.start()
            for i, t in zip(chunks, threads):
                t.join(240)
                if t.is_alive():
                    hung.append(i)
                results[i] = [tok for c in chunks[i] for tok in c.token_ids]
    finally:
        stop.set()
        for p in loads:
            p.join(10)
    assert hung == [], f"{len(hung)} requests hung"
    assert cluster.frontend.health.num_replayed == 0  # no token message was lost on the way (none had to be fetched)
    assert sum(bool(o.get("ok")) for o in outcomes) >= 40, outcomes  # most migrations commit
    for i in range(60):
        assert results[i] == references[i], f"request {i} diverged"
    assert_idle_without_leaks(cluster)
