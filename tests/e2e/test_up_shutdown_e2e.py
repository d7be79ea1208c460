"""``llumnix-dask up`` as users run it, stopped as users stop it: Ctrl-C (SIGINT) or ``kill`` / ``timeout`` / a
service manager (SIGTERM). Either way the server stops serving, the cluster closes with its worker processes,
and nothing is left for Python's resource tracker to clean up."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _default_signals() -> None:
    # A child of a background job may inherit SIGINT ignored; a user's terminal delivers it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_up() -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llumnix_dask.cli", "up", "--port", "0", "--dashboard-address", ":0",
         "--instances", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_default_signals,
    )
    lines: list[str] = []
    url = None
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r"OpenAI API\s+(http://\S+)/v1", line)
        if found:
            url = found.group(1)
            break
    assert url, "".join(lines)
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.extend(proc.stdout), daemon=True)
    reader.start()
    proc.reader, proc.rest = reader, rest  # type: ignore[attr-defined]
    return proc, url, lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_up_shuts_down_cleanly_on_ctrl_c_and_sigterm(sig):
    proc, url, head = start_up()
    try:
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 4}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "the embedded cluster should run its instances in worker processes"
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
        proc.reader.join(30)  # type: ignore[attr-defined]
        output = "".join(head + proc.rest)  # type: ignore[attr-defined]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, output
    assert "leaked semaphore" not in output and "Traceback" not in output, output
    deadline = time.monotonic() + 60
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers):
        assert time.monotonic() < deadline, f"worker processes outlived the server: {workers}"
        time.sleep(0.2)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v1/models", timeout=5)
