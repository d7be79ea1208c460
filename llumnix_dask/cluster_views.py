"""What a :class:`~llumnix_dask.Cluster` shows and tunes: instances, migrations, decisions, knobs, notebook views.

A mixin over the Cluster's scheduler calls (``_scheduler_call``, ``_instance_rows``) and its Dask client, so
the Cluster module keeps to starting, serving and scaling.
"""

from __future__ import annotations

import html
from typing import Any

from llumnix_dask.config import PolicyConfig
from llumnix_dask.wire import pack
from llumnix_dask.wire import scheduler_api as api
from llumnix_dask.wire import worker_api as instance_api


class ClusterViews:
    """Introspection and live tuning of a running cluster (mixed into :class:`~llumnix_dask.Cluster`)."""

    @property
    def policy(self) -> PolicyConfig:
        return self._scheduler_call(api.GetPolicy(), PolicyConfig)

    def set_policy(self, **knobs: Any) -> PolicyConfig:
        """Change scheduler knobs live, e.g. ``set_policy(dispatch="infaas", migration_enabled=False)``."""
        reply = self._scheduler_call(api.SetPolicy(updates=knobs), api.PolicyReply)
        if reply.status != "OK":
            raise ValueError(reply.error)
        return reply.policy

    def instances(self) -> Any:
        """One row per instance: load, KV usage, freeness, draining / migrating flags."""
        import pandas as pd

        rows = pack(self._instance_rows())
        frame = pd.DataFrame(rows)
        return frame.set_index("instance_id") if rows else frame

    def migrations(self, n: int | None = None) -> Any:
        """The migration log (newest last) as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(self._scheduler_call(api.GetMigrations(n=n)))

    def explain(self, n: int = 20, kind: str | None = None) -> Any:
        """The last ``n`` scheduler decisions (dispatch, migration, scaling, drain) with their reasons."""
        import pandas as pd

        return pd.DataFrame(self._scheduler_call(api.Explain(n=n, kind=kind)))

    def snapshot(self) -> dict:
        """The scheduler's plain-dict snapshot (see ``GlobalScheduler.snapshot``)."""
        return self._scheduler_call(api.GetSnapshot())

    def migrate(self, request_id: str, dst: str | None = None) -> dict:
        """Live-migrate a running request now (to ``dst`` or the freest other instance); how it went: ``ok``,
        ``reason`` and, when it got that far, ``downtime_s``, ``blocks``, ``num_stages``, ..."""
        report = self._scheduler_call(api.ForceMigration(request_id=request_id, dst=dst), instance_api.MigrationReport)
        return {"ok": report.ok, "request_id": report.request_id, "reason": report.reason, **report.details()}

    def panel(self) -> Any:
        """An ipywidgets control panel of the scheduler's knobs; changes apply live (see ``widgets.panel``)."""
        from llumnix_dask.widgets.panel import cluster_panel

        return cluster_panel(self)

    def live_view(self, interval_s: float = 0.5, max_duration_s: float | None = None) -> Any:
        """An inline notebook view of instances and migrations, refreshed every ``interval_s`` seconds."""
        from llumnix_dask.widgets.live_view import LiveView

        return LiveView(self.snapshot, interval_s=interval_s, max_duration_s=max_duration_s)

    @property
    def scheduler_address(self) -> str:
        return self.client.scheduler.address

    @property
    def dashboard_link(self) -> str | None:
        try:
            return self.client.dashboard_link
        except Exception:
            return None

    def __repr__(self) -> str:
        return f"<llumnix Cluster: {len(self._instance_rows())} instances, scheduler {self.scheduler_address}>"

    def _repr_html_(self) -> str:
        rows = pack(self._instance_rows())
        try:
            policy = pack(self.policy)
        except Exception:
            policy = {}
        link = self.dashboard_link
        head = (
            f"<h4>llumnix-dask Cluster</h4><p>{len(rows)} instances &middot; backend "
            f"<b>{html.escape(self.engine_config.backend)}</b> &middot; model "
            f"<b>{html.escape(self.engine_config.model or 'built-in tiny model')}</b> &middot; dispatch "
            f"<b>{html.escape(str(policy.get('dispatch', '?')))}</b>, migration "
            f"<b>{'on' if policy.get('migration_enabled') else 'off'}</b></p>"
            f"<p>scheduler <code>{html.escape(self.scheduler_address)}</code>"
            + (f" &middot; <a href='{html.escape(link)}' target='_blank'>Dask dashboard</a>" if link else "")
            + "</p>"
        )
        cols = ["instance_id", "device", "num_running", "num_waiting", "kv_usage", "freeness", "terminating"]
        table = "<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
        for row in rows:
            cells = []
            for c in cols:
                v = row.get(c, "")
                cells.append(f"<td>{v:.2f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>")
            table += "<tr>" + "".join(cells) + "</tr>"
        return head + table + "</table>"
