"""An ipywidgets control panel for the global scheduler's knobs: ``cluster.panel()``.

Every change is sent at once through the scheduler plugin's ``llumnix_set_policy`` handler, which
validates it; the panel then shows the policy the scheduler really runs (a rejected value is reverted and
the scheduler's error message is shown in the panel). The dashboard picks the change up on its next
refresh (< 0.5 s)::

    >>> panel = cluster.panel()                                          # doctest: +SKIP
    >>> panel                        # in a notebook: dropdowns, switches and sliders
    >>> panel.dispatch.value = "infaas"                # same as choosing it in the dropdown
    >>> cluster.policy.dispatch
    'infaas'
"""

from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as widgets

from llumnix_dask.config import DISPATCH_POLICIES, REQUEST_SELECTIONS

# Slider ranges (the scheduler validates values; these only bound what the sliders offer).
FREENESS_SLIDER_MIN = -100.0
FREENESS_SLIDER_MAX = 500.0
HEADROOM_SLIDER_MAX = 2000
INSTANCES_SLIDER_MAX = 64

_DESCRIPTION_STYLE = {"description_width": "150px"}


class ControlPanel(widgets.VBox):
    """Live knobs of a running cluster.

    ``set_policy(**knobs) -> dict`` applies knobs and returns the resulting policy as a dict (raising
    ValueError with the scheduler's message when it rejects them); ``get_policy() -> dict`` reads it.
    ``cluster.panel()`` wires both to the scheduler plugin.
    """

    def __init__(self, set_policy: Callable[..., dict], get_policy: Callable[[], dict]) -> None:
        self._set_policy = set_policy
        self._get_policy = get_policy
        self._syncing = False
        policy = get_policy()

        self.dispatch = widgets.Dropdown(options=list(DISPATCH_POLICIES), description="dispatch policy")
        self.migration_enabled = widgets.Checkbox(description="live migration", indent=False)
        self.migration_thresholds = widgets.FloatRangeSlider(
            min=FREENESS_SLIDER_MIN, max=FREENESS_SLIDER_MAX, step=1.0, description="migrate out / in F",
            continuous_update=False, readout_format=".0f",
        )
        self.request_selection = widgets.Dropdown(options=list(REQUEST_SELECTIONS), description="request selection")
        self.priorities_enabled = widgets.Checkbox(description="priority headroom", indent=False)
        self.priority_headroom_blocks = widgets.IntSlider(
            min=0, max=HEADROOM_SLIDER_MAX, step=16, description="headroom blocks", continuous_update=False
        )
        self.ttft_slo_s = widgets.FloatText(description="TTFT SLO normal (s)")
        self.ttft_slo_high_s = widgets.FloatText(description="TTFT SLO high (s)")
        self.scaling_enabled = widgets.Checkbox(description="auto-scaling policy", indent=False)
        self.scaling_band = widgets.FloatRangeSlider(
            min=FREENESS_SLIDER_MIN, max=FREENESS_SLIDER_MAX, step=1.0, description="scaling band F [x, y]",
            continuous_update=False, readout_format=".0f",
        )
        self.instance_range = widgets.IntRangeSlider(
            min=1, max=INSTANCES_SLIDER_MAX, description="instances min / max", continuous_update=False
        )
        self.status = widgets.HTML()
        for w in self._value_widgets():
            w.style = _DESCRIPTION_STYLE
            if not isinstance(w, widgets.Checkbox):
                w.layout = widgets.Layout(width="460px")
        self.show_policy(policy)
        for name, w in self._knob_widgets().items():
            w.observe(self._on_change(name), names="value")

        def section(title: str, *children: Any) -> widgets.VBox:
            return widgets.VBox([widgets.HTML(f"<b>{title}</b>"), *children],
                                layout=widgets.Layout(margin="0 0 6px 0"))

        super().__init__(
            [
                widgets.HTML("<h4 style='margin:2px 0'>Llumnix scheduler knobs</h4>"),
                section("Dispatch", self.dispatch),
                section("Migration", self.migration_enabled, self.migration_thresholds, self.request_selection),
                section("Priorities and SLOs", self.priorities_enabled, self.priority_headroom_blocks,
                        self.ttft_slo_s, self.ttft_slo_high_s),
                section("Scaling", self.scaling_enabled, self.scaling_band, self.instance_range),
                self.status,
            ],
            layout=widgets.Layout(border="1px solid #dee2e6", padding="6px 10px", width="500px"),
        )

    # -- knob <-> policy mapping ---------------------------------------------------------------------
    def _knob_widgets(self) -> dict[str, widgets.ValueWidget]:
        return {
            "dispatch": self.dispatch,
            "migration_enabled": self.migration_enabled,
            "migration_thresholds": self.migration_thresholds,
            "request_selection": self.request_selection,
            "priorities_enabled": self.priorities_enabled,
            "priority_headroom_blocks": self.priority_headroom_blocks,
            "ttft_slo_s": self.ttft_slo_s,
            "ttft_slo_high_s": self.ttft_slo_high_s,
            "scaling_enabled": self.scaling_enabled,
            "scaling_band": self.scaling_band,
            "instance_range": self.instance_range,
        }

    def _value_widgets(self) -> list[widgets.ValueWidget]:
        return list(self._knob_widgets().values())

    @staticmethod
    def knobs_for(name: str, value: Any) -> dict[str, Any]:
        """The PolicyConfig fields one widget stands for (an SLO of 0 means no target)."""
        if name == "migration_thresholds":
            return {"migrate_out_freeness": float(value[0]), "migrate_in_freeness": float(value[1])}
        if name == "scaling_band":
            return {"scale_up_freeness": float(value[0]), "scale_down_freeness": float(value[1])}
        if name == "instance_range":
            return {"min_instances": int(value[0]), "max_instances": int(value[1])}
        if name in ("ttft_slo_s", "ttft_slo_high_s"):
            return {name: float(value) if value else None}
        return {name: value}

    def show_policy(self, policy: dict) -> None:
        """Set every widget from a policy dict without sending anything back."""
        self._syncing = True
        try:
            self.dispatch.value = policy["dispatch"]
            self.migration_enabled.value = bool(policy["migration_enabled"])
            self.migration_thresholds.value = _in_slider(
                self.migration_thresholds, policy["migrate_out_freeness"], policy["migrate_in_freeness"]
            )
            self.request_selection.value = policy["request_selection"]
            self.priorities_enabled.value = bool(policy["priorities_enabled"])
            self.priority_headroom_blocks.value = min(int(policy["priority_headroom_blocks"]), HEADROOM_SLIDER_MAX)
            self.ttft_slo_s.value = float(policy.get("ttft_slo_s") or 0.0)
            self.ttft_slo_high_s.value = float(policy.get("ttft_slo_high_s") or 0.0)
            self.scaling_enabled.value = bool(policy["scaling_enabled"])
            self.scaling_band.value = _in_slider(
                self.scaling_band, policy["scale_up_freeness"], policy["scale_down_freeness"]
            )
            self.instance_range.value = (
                min(int(policy["min_instances"]), INSTANCES_SLIDER_MAX),
                min(int(policy["max_instances"]), INSTANCES_SLIDER_MAX),
            )
        finally:
            self._syncing = False

    def _on_change(self, name: str) -> Callable[[dict], None]:
        def changed(change: dict) -> None:
            if self._syncing:
                return
            self.apply(**self.knobs_for(name, change["new"]))

        return changed

    # -- applying ------------------------------------------------------------------------------------
    def apply(self, **knobs: Any) -> bool:
        """Send knobs to the scheduler; show the outcome in the panel. Returns True when accepted."""
        try:
            policy = self._set_policy(**knobs)
        except Exception as exc:  # shown in the panel: a callback's exception would vanish in the kernel log
            self.status.value = (
                "<div style='color:#b00020'>rejected: " + html.escape(str(exc)) + "</div>"
            )
            try:
                self.show_policy(self._get_policy())  # back to what the scheduler runs
            except Exception:
                pass
            return False
        self.show_policy(policy)
        text = ", ".join(f"{k}={v!r}" for k, v in knobs.items())
        self.status.value = "<div style='color:#1b7f3b'>applied: " + html.escape(text) + "</div>"
        return True

    def refresh(self) -> None:
        """Re-read the scheduler's policy (after another client changed it)."""
        self.show_policy(self._get_policy())


def _in_slider(slider: widgets.FloatRangeSlider, lo: float, hi: float) -> tuple[float, float]:
    # Values outside the slider's range are widened into it rather than silently clipped to a wrong knob.
    slider.min = min(slider.min, float(lo))
    slider.max = max(slider.max, float(hi))
    return float(lo), float(hi)


def cluster_panel(cluster: Any) -> ControlPanel:
    """The control panel wired to a :class:`llumnix_dask.Cluster` (what ``cluster.panel()`` returns)."""
    import dataclasses

    def set_policy(**knobs: Any) -> dict:
        return dataclasses.asdict(cluster.set_policy(**knobs))

    def get_policy() -> dict:
        return dataclasses.asdict(cluster.policy)

    return ControlPanel(set_policy, get_policy)
