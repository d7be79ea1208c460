"""The dashboard page in headless Chromium and the control panel, against one real cluster (2 nano engines)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from llumnix_dask import Cluster, EngineConfig, PolicyConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Small KV caches make a handful of requests visible in the bars.
ENGINE = EngineConfig(num_blocks=96, max_batch_size=16)


def wait_until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster():
    with Cluster(2, engine=ENGINE, policy=PolicyConfig(), dashboard_address="127.0.0.1:0") as c:
        yield c


class Load:
    """Keeps both instances busy with normal and high-priority requests until stopped."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            futures = [
                self.cluster.submit(f"story number {i + k}", max_tokens=160 + 40 * k, ignore_eos=True,
                                    priority="high" if k == 0 else "normal", slo=2.0)
                for k in range(4)
            ]
            i += 4
            for f in futures:
                f.result(timeout=120)

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=120)


def _instance_ids(cluster: Cluster) -> list[str]:
    return sorted(cluster.instances().index)


# -- the control panel -----------------------------------------------------------------------------------
def test_panel_dropdown_changes_the_scheduler_policy(cluster):
    panel = cluster.panel()
    assert panel.dispatch.value == "llumnix"
    panel.dispatch.value = "infaas"
    assert cluster.policy.dispatch == "infaas"  # asked of the scheduler
    assert "applied" in panel.status.value

    panel.migration_thresholds.value = (5.0, 80.0)
    policy = cluster.policy
    assert (policy.migrate_out_freeness, policy.migrate_in_freeness) == (5.0, 80.0)

    panel.ttft_slo_high_s.value = 0.25
    assert cluster.policy.ttft_slo_high_s == 0.25

    panel.dispatch.value = "llumnix"
    assert cluster.policy.dispatch == "llumnix"


def test_panel_shows_a_rejected_value_and_keeps_the_running_policy(cluster):
    panel = cluster.panel()
    before = cluster.policy
    panel.ttft_slo_s.value = -1.0  # the scheduler's PolicyConfig validation rejects it
    assert "rejected" in panel.status.value and "ttft_slo_s" in panel.status.value
    assert cluster.policy == before
    assert panel.ttft_slo_s.value == float(before.ttft_slo_s or 0.0)  # the widget shows what runs


def test_live_view_shows_every_instance_and_stops_on_request(cluster):
    view = cluster.live_view(interval_s=0.2)
    try:
        wait_until(lambda: view.updates >= 3, 20, "live view refreshes")
        for iid in _instance_ids(cluster):
            assert iid in view.html.value
    finally:
        view.stop()
    assert not view.running


# -- the dashboard page in a browser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium / chromedriver not installed (Debian packages chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llumnix-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1500,1250"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


SOURCE_COLUMN_JS = """
const docs = (window.Bokeh && window.Bokeh.documents) || [];
for (const doc of docs) {
  const src = doc.get_model_by_name(arguments[0]);
  if (src) {
    const data = src.data instanceof Map ? Object.fromEntries(src.data) : src.data;
    return Array.from(data[arguments[1]] || []);
  }
}
return null;
"""
MODEL_TEXT_JS = """
const docs = (window.Bokeh && window.Bokeh.documents) || [];
for (const doc of docs) { const m = doc.get_model_by_name(arguments[0]); if (m) return m.text; }
return null;
"""


def test_dashboard_page_renders_instance_bars_and_migrations(cluster, browser):
    from selenium.webdriver.common.by import By

    url = cluster.dashboard_link.replace("/status", "/llumnix")
    ids = _instance_ids(cluster)
    with Load(cluster):
        browser.get(url)
        # One bar per instance, labelled with the instance ids, straight from the page's Bokeh document.
        bars = wait_until(
            lambda: sorted(browser.execute_script(SOURCE_COLUMN_JS, "llumnix_instances", "instance_id") or []) == ids
            and browser.execute_script(SOURCE_COLUMN_JS, "llumnix_instances", "instance_id"),
            60, "instance bars in the page",
        )
        assert len(bars) == len(ids)
        # The page is in the Dask dashboard's navigation bar.
        assert browser.find_elements(By.CSS_SELECTOR, "a[href='llumnix']")
        # Live: load shows up, then a forced migration appears in the timeline with its endpoints.
        wait_until(lambda: sum(browser.execute_script(SOURCE_COLUMN_JS, "llumnix_instances", "running") or [0]) > 0,
                   60, "running requests in the queue bars")
        moved = wait_until(lambda: _force_one_migration(cluster), 60, "a forced migration")
        wait_until(
            lambda: moved["request_id"] in (browser.execute_script(SOURCE_COLUMN_JS, "llumnix_migrations", "request_id")
                                            or []),
            30, f"migration of {moved['request_id']} in the timeline",
        )
        # A knob changed elsewhere shows up in the page's header.
        cluster.set_policy(dispatch="infaas")
        wait_until(lambda: "infaas" in (browser.execute_script(MODEL_TEXT_JS, "llumnix_header") or ""), 10,
                   "the new dispatch policy in the page")
        cluster.set_policy(dispatch="llumnix")
        wait_until(lambda: "<b>llumnix</b>" in (browser.execute_script(MODEL_TEXT_JS, "llumnix_header") or ""), 10,
                   "the dispatch policy back in the page")
        wait_until(lambda: len(browser.execute_script(SOURCE_COLUMN_JS, "llumnix_latency", "time") or []) > 2, 30,
                   "latency history")
        seen = len(browser.execute_script(SOURCE_COLUMN_JS, "llumnix_latency", "time"))
        wait_until(lambda: len(browser.execute_script(SOURCE_COLUMN_JS, "llumnix_latency", "time")) > seen + 1, 10,
                   "two more refreshes")  # so the screenshot shows settled plots
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def _force_one_migration(cluster: Cluster) -> dict | None:
    """Migrate the most recently dispatched request that is still running; None if none could move."""
    for row in cluster.explain(50, kind="dispatch").iloc[::-1].itertuples():
        result = cluster.migrate(row.request_id)
        if result.get("ok"):
            return result
    return None
