"""A tiny deterministic engine for llumlet tests: no tensors, one token per running request per step.

Token k of a request is ``(sum(prompt) + 7 * k) % 1000``; text is ``" t<id>"``. It implements the serving
half of the EngineBackend protocol (migration is not supported).
"""

from __future__ import annotations

import threading
import time

from llumnix_dask.engine.base import StepOutput
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.request import Request, RequestStatus


class FakeEngine:
    def __init__(self, instance_id: str, num_blocks: int = 100, block_size: int = 16, step_s: float = 0.002):
        self.instance_id = instance_id
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.step_s = step_s
        self._lock = threading.Lock()
        self._requests: dict[str, Request] = {}

    def add_request(self, request: Request) -> None:
        if request.num_prompt_tokens > 1000:
            raise ValueError(f"prompt of {request.num_prompt_tokens} tokens is longer than 1000")
        with self._lock:
            self._requests[request.request_id] = request

    def abort(self, request_id: str) -> bool:
        with self._lock:
            return self._requests.pop(request_id, None) is not None

    def has_work(self) -> bool:
        return bool(self._requests)

    def step(self) -> list[StepOutput]:
        time.sleep(self.step_s)
        outs = []
        with self._lock:
            for rid, req in list(self._requests.items()):
                if req.status is RequestStatus.WAITING:
                    req.transition(RequestStatus.RUNNING, time.time())
                k = req.num_output_tokens
                token = (sum(req.prompt_token_ids) + 7 * k) % 1000
                req.append_token(token, time.time())
                done = req.num_output_tokens >= req.sampling.max_tokens
                if done:
                    req.transition(RequestStatus.FINISHED, time.time())
                    del self._requests[rid]
                outs.append(StepOutput(rid, [token], f" t{token}", done, "length" if done else None))
        return outs

    def load(self) -> InstanceLoad:
        with self._lock:
            running = [
                RequestLoad(r.request_id, -(-r.num_tokens // self.block_size), r.priority, r.num_tokens, r.arrival_time)
                for r in self._requests.values()
            ]
        used = sum(r.blocks for r in running)
        return InstanceLoad.from_requests(self.instance_id, self.num_blocks, used, running=running)

    def get_request(self, request_id: str):
        return self._requests.get(request_id)


def make_fake_engine(config, instance_id: str) -> FakeEngine:
    return FakeEngine(instance_id)


class CharTokenizer:
    """Bytes as token ids."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(i % 256 for i in ids).decode(errors="replace")
