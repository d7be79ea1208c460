"""Multi-stage live migration of one request, source side (Llumnix paper, section 4.3).

Stage k copies the KV blocks the request *completed* since stage k-1 while it keeps decoding on the
source (a full block never changes again). When the rest is small (<= ``last_stage_max_blocks``,
the partial last block included) or stage ``max_stages`` is reached, the source pauses that request
only, copies the rest and asks the destination to commit; decoding resumes there and the source
forgets the request. The downtime is the pause alone, so it stays flat as sequences grow.
``max_stages=1`` is the blocking copy (stop, copy everything, resume elsewhere).

Every stage is a handshake: the destination pre-allocates the stage's blocks or refuses (it keeps a
watermark of free blocks on the first stage). Whatever goes wrong, exactly one instance keeps the
request and no pre-allocated block leaks:

* destination refuses (out of blocks)        -> source keeps decoding it, outcome ``refused``
* request finishes / is aborted / preempted  -> destination frees, ``aborted:finished`` ...
* destination errors, is dead or silent      -> source resumes it, ``aborted:dst-error`` / ``dst-timeout``
* source dies                                -> destination frees after ``dst_timeout_s`` (destination.py)

A queued request (never started, no KV) simply moves to the destination's queue, in arrival order.

Example (in one process; see transport.py for the Dask and NCCL endpoints)::

    dst = MigrationDestination(engine_b, config)
    result = await migrate_out(engine_a, "req-1", InProcessEndpoint(dst), config)
    result.outcome, result.downtime_s
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Callable, TypeVar

from llumnix_dask.config import MigrationConfig
from llumnix_dask.engine.base import EngineBackend
from llumnix_dask.migration.endpoint import DestinationEndpoint
from llumnix_dask.migration.records import COMMITTED, REFUSED, MigrationResult, StageRecord, new_migration_id
from llumnix_dask.migration.staging import (
    MigrationAborted,
    Refused,
    _nbytes,
    block_nbytes_async,
    blocks_per_message,
    call_destination,
    send_stage,
)
from llumnix_dask.request import Request, RequestStatus

T = TypeVar("T")



def live_stage_end(
    stage: int, num_kv_tokens: int, sent_blocks: int, block_size: int, config: MigrationConfig
) -> int | None:
    """The stage rule, shared by :func:`migrate_out` and the simulator's migration model.

    At stage ``stage`` (1-based) of a request holding ``num_kv_tokens`` KV tokens whose first ``sent_blocks``
    blocks are already on the destination: the end (exclusive) of the blocks ``[sent_blocks, end)`` that a
    *live* stage copies - those completed since, a full block never changes again - or None when this stage is
    the last one: the rest (the partial block included) is small or ``max_stages`` is reached, so the request
    pauses and blocks ``[sent_blocks, ceil(num_kv_tokens / block_size))`` go, counted after the pause. Only
    the first reservation of a migration keeps the destination's watermark free::

        >>> cfg = MigrationConfig(max_stages=3, last_stage_max_blocks=16)
        >>> live_stage_end(1, 8000, 0, 16, cfg)       # 500 blocks to go: copy the 500 full ones live
        500
        >>> live_stage_end(2, 8100, 500, 16, cfg) is None   # 7 left: pause and finish
        True
    """
    rest = math.ceil(num_kv_tokens / block_size) - sent_blocks
    if stage < config.max_stages and rest > config.last_stage_max_blocks:
        return num_kv_tokens // block_size
    return None




async def migrate_out(
    engine: EngineBackend,
    request_id: str,
    dst: DestinationEndpoint,
    config: MigrationConfig,
    *,
    migration_id: str | None = None,
) -> MigrationResult:
    """Move ``request_id`` from ``engine`` to ``dst``, live; never raises for a failed migration.

    Runs on an asyncio loop (the Dask worker's) while the engine keeps stepping in its own thread;
    block copies run in worker threads so the loop stays responsive.
    """
    mid = migration_id or new_migration_id()
    result = MigrationResult(mid, request_id, getattr(engine, "instance_id", "?"), dst.name, "",
                             transport=getattr(dst, "transport", type(dst).__name__))
    started = time.perf_counter()
    try:
        request = await _on(engine.get_request, request_id)
        if request is None:
            raise MigrationAborted("not-found")
        if request.status is RequestStatus.WAITING:
            result.queued = True
            await _migrate_queued(engine, request_id, dst, config, mid)
        else:
            await _migrate_running(engine, request, dst, config, result)
        result.outcome = COMMITTED
        result.ok = True
    except Refused:
        result.outcome = REFUSED
    except MigrationAborted as exc:
        result.outcome = f"aborted:{exc.reason}"
    except Exception as exc:  # noqa: BLE001 - an engine error must not kill the caller's loop
        result.outcome = f"aborted:error:{type(exc).__name__}: {exc}"
    result.total_s = time.perf_counter() - started
    return result


async def _tell_abort(dst: DestinationEndpoint, mid: str, reason: str, config: MigrationConfig) -> None:
    # Best effort: a dead destination cannot be told, and frees by itself after dst_timeout_s.
    try:
        await asyncio.wait_for(dst.abort(mid, reason), config.stage_timeout_s)
    except Exception:  # noqa: BLE001
        pass


async def _migrate_queued(
    engine: EngineBackend, request_id: str, dst: DestinationEndpoint, config: MigrationConfig, mid: str
) -> None:
    try:
        request = await _on(engine.take_waiting, request_id)
    except (KeyError, ValueError, RuntimeError):
        raise MigrationAborted("not-waiting") from None
    request.num_migrations += 1  # counted on the copy that travels
    failure: MigrationAborted | None = None
    try:
        accepted = await call_destination(config, "enqueue", dst.enqueue(mid, request))
    except MigrationAborted as exc:
        accepted, failure = False, exc
    if not accepted:
        # Back into our own queue, at its arrival-time place. A timed-out enqueue may still land on the
        # destination later, so tell it to drop the request.
        request.num_migrations -= 1
        await _on(engine.add_request, request)
        if failure is not None:
            await _tell_abort(dst, mid, failure.reason, config)
            raise failure
        raise Refused()


async def _on(fn: Callable[..., T], *args: Any) -> T:
    """Run an engine call in a thread: engines hold their lock for a whole step (a long prefill even),
    and the caller's event loop (a Dask worker's) must keep serving meanwhile."""
    return await asyncio.to_thread(fn, *args)


def _check_running(request: Request, preemptions: int) -> None:
    """Abort if the request left the batch since the migration started (its blocks may be gone).

    Reads the live request object the engine updates (a plain attribute read, no engine lock: every
    lock round trip would wait for a whole engine step).
    """
    status = request.status
    if status.done:
        raise MigrationAborted("aborted" if status is RequestStatus.ABORTED else "finished")
    if request.num_preemptions != preemptions or status is not RequestStatus.RUNNING:
        raise MigrationAborted("preempted")


async def _migrate_running(
    engine: EngineBackend,
    request: Request,
    dst: DestinationEndpoint,
    config: MigrationConfig,
    result: MigrationResult,
) -> None:
    rid, mid = request.request_id, result.migration_id
    if request.status is not RequestStatus.RUNNING:
        raise MigrationAborted("preempted" if request.status is RequestStatus.WAITING else "not-running")
    preemptions = request.num_preemptions
    bs = engine.block_size
    sent = 0  # blocks already on the destination, a prefix of the request's block table
    reserved = False
    paused = False
    try:
        for stage in range(1, config.max_stages + 1):
            stage_start = time.perf_counter()
            try:
                num_kv = await _on(engine.num_kv_tokens, rid)
                table = await _on(engine.request_blocks, rid)
            except KeyError:
                _check_running(request, preemptions)
                raise MigrationAborted("not-running") from None
            end = live_stage_end(stage, num_kv, sent, bs, config)
            if end is not None:
                # Live stage: the blocks completed since the previous stage, the request keeps decoding.
                ids = table[sent : min(end, len(table))]
                nbytes = await send_stage(engine, dst, mid, rid, ids, sent, config, first_stage=stage == 1)
                reserved = True
                _check_running(request, preemptions)
                sent += len(ids)
                result.stages.append(StageRecord(stage, len(ids), nbytes, time.perf_counter() - stage_start, False))
                continue
            # Last stage: pause only this request, send the rest, commit.
            _check_running(request, preemptions)
            try:
                state = await _on(engine.pause, rid)  # waits for the step in flight
            except (KeyError, ValueError, RuntimeError):
                _check_running(request, preemptions)
                raise MigrationAborted("pause-failed") from None
            paused = True
            # Downtime counts from here: the request is out of the batch until the destination has it.
            pause_start = time.perf_counter()
            ids = state.block_ids[sent : math.ceil(state.num_kv_tokens / bs)]
            if len(ids) <= blocks_per_message(await block_nbytes_async(engine), config):
                # The usual case: one gather and one message that reserves, scatters and commits.
                tail = [await _on(engine.export_blocks, ids)] if ids else []
                nbytes = sum(_nbytes(b) for b in tail)
                if request.status is not RequestStatus.MIGRATING:
                    raise MigrationAborted("aborted")  # aborted by the client while paused
                reserved = True  # the commit may reserve on the destination even if its answer is lost
                committed = await call_destination(
                    config, "commit", dst.commit(mid, state, [len(ids)] if ids else [], tail)
                )
                if not committed:
                    raise Refused() if stage == 1 else MigrationAborted("dst-out-of-blocks")
            else:  # a blocking copy (max_stages=1) or a long tail: reserve, stream, then commit
                nbytes = await send_stage(engine, dst, mid, rid, ids, sent, config, first_stage=stage == 1, paused=True)
                reserved = True
                if request.status is not RequestStatus.MIGRATING:
                    raise MigrationAborted("aborted")
                await call_destination(config, "commit", dst.commit(mid, state))
            result.downtime_s = time.perf_counter() - pause_start
            result.num_kv_tokens = state.num_kv_tokens
            result.resume_index = state.request.num_output_tokens
            try:
                await _on(engine.release, rid)
            except (KeyError, ValueError, RuntimeError):
                # Aborted on the source during the commit round trip: undo the destination's copy too.
                paused = False
                raise MigrationAborted("aborted") from None
            paused = False
            result.stages.append(StageRecord(stage, len(ids), nbytes, time.perf_counter() - stage_start, True))
            return
    except BaseException as exc:  # cancellation and engine errors too: never leave the request paused
        if paused:
            try:
                await _on(engine.resume, rid)
            except (KeyError, ValueError, RuntimeError):
                pass  # finished or aborted while paused: nothing to resume
        if reserved or not isinstance(exc, Refused):
            reason = exc.reason if isinstance(exc, MigrationAborted) else f"{REFUSED if isinstance(exc, Refused) else 'error'}"
            await _tell_abort(dst, mid, reason, config)
        raise


