"""Greedy outputs of vLLM's own offline API (``vllm.LLM.generate``), the reference the vllm backend must match.

Run in a subprocess: ``LLM`` builds and tears down its own engine, and vLLM's teardown resets process-wide
state that other engines of the test process still use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    model, spec_path, out_path = sys.argv[1:4]
    spec = json.load(open(spec_path))
    llm = LLM(model=model, dtype="float32", kv_cache_memory_bytes=64 << 20, max_model_len=spec["max_model_len"],
              enforce_eager=spec["enforce_eager"], seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    out = {}
    if spec["texts"]:
        out["texts"] = [list(o.outputs[0].token_ids) for o in llm.generate(spec["texts"], params, use_tqdm=False)]
        out["text_prompt_ids"] = [list(o.prompt_token_ids) for o in llm.generate(spec["texts"], params, use_tqdm=False)]
    if spec["token_prompts"]:
        prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["token_prompts"]]
        out["token_prompts"] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    json.dump(out, open(out_path, "w"))
    """
)


def offline_greedy(
    model: str | Path,
    tmp_dir: Path,
    *,
    texts: list[str] = (),
    token_prompts: list[list[int]] = (),
    max_tokens: int = 32,
    max_model_len: int = 2048,
    enforce_eager: bool = True,
) -> dict:
    """``{"texts": [ids...], "text_prompt_ids": [...], "token_prompts": [ids...]}`` from ``LLM.generate``."""
    spec = {"texts": list(texts), "token_prompts": [list(p) for p in token_prompts], "max_tokens": max_tokens,
            "max_model_len": max_model_len, "enforce_eager": enforce_eager}
    script, spec_path, out_path = tmp_dir / "reference.py", tmp_dir / "spec.json", tmp_dir / "out.json"
    script.write_text(_SCRIPT)
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "ERROR",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    proc = subprocess.run([sys.executable, str(script), str(model), str(spec_path), str(out_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm.LLM reference run failed:\n{proc.stderr[-4000:]}")
    return json.loads(out_path.read_text())
