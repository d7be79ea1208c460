"""The Llumnix page is registered in the Dask dashboard: by ``register_page`` and by the scheduler preload."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_register_page_adds_the_route_and_the_navigation_entry():
    import distributed.dashboard.scheduler as dash

    from llumnix_dask.widgets.dashboard import individual_llumnix_doc, llumnix_doc, register_page

    assert register_page() and register_page()  # idempotent
    assert dash.applications["/llumnix"] is llumnix_doc
    assert dash.applications["/individual-llumnix"] is individual_llumnix_doc

    class FakeScheduler:
        jupyter = False

    pages = dash.template_variables(FakeScheduler())["pages"]
    assert pages.count("llumnix") == 1 and pages[-1] == "info"


PRELOADED_SCHEDULER = textwrap.dedent(
    """
    import asyncio, httpx
    from distributed import Scheduler

    async def main():
        async with Scheduler(preload=["llumnix_dask.preload.scheduler"], dashboard_address="127.0.0.1:0") as s:
            base = f"http://127.0.0.1:{s.http_server.port}"
            async with httpx.AsyncClient() as http:
                page = await http.get(base + "/llumnix")
                status = await http.get(base + "/status")
                plots = (await http.get(base + "/individual-plots.json")).json()
            print(page.status_code, 'href="llumnix"' in status.text, "/individual-llumnix" in plots.values())

    asyncio.run(main())
    """
)


def test_a_scheduler_started_with_the_preload_serves_the_page():
    # A fresh interpreter, as in production: the preload module registers the page when it is imported.
    out = subprocess.run([sys.executable, "-c", PRELOADED_SCHEDULER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["200", "True", "True"], out.stdout + out.stderr[-2000:]
