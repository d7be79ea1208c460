import dataclasses

import pytest

from llumnix_dask.config import EngineConfig, LatencyModel, MigrationConfig, PolicyConfig, ServeConfig, SimConfig


@pytest.mark.parametrize("make,field", [
    (lambda: PolicyConfig(dispatch="fastest"), "PolicyConfig.dispatch"),
    (lambda: PolicyConfig(request_selection="XX"), "PolicyConfig.request_selection"),
    (lambda: PolicyConfig(scale_up_freeness=80, scale_down_freeness=20), "PolicyConfig.scale_up_freeness"),
    (lambda: PolicyConfig(migrate_out_freeness=70, migrate_in_freeness=60), "PolicyConfig.migrate_out_freeness"),
    (lambda: PolicyConfig(min_instances=0), "PolicyConfig.min_instances"),
    (lambda: PolicyConfig(min_instances=4, max_instances=2), "PolicyConfig.max_instances"),
    (lambda: PolicyConfig(migration_interval_s=0), "PolicyConfig.migration_interval_s"),
    (lambda: MigrationConfig(max_stages=0), "MigrationConfig.max_stages"),
    (lambda: EngineConfig(block_size=0), "EngineConfig.block_size"),
    (lambda: LatencyModel(decode_base_ms=-1), "LatencyModel.decode_base_ms"),
    (lambda: SimConfig(num_instances=0), "SimConfig.num_instances"),
    (lambda: SimConfig(sample_interval_s=0), "SimConfig.sample_interval_s"),
    (lambda: ServeConfig(port=70000), "ServeConfig.port"),
])
def test_bad_values_name_the_field(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()


def test_empty_scaling_band_message_shows_x_and_y():
    with pytest.raises(ValueError, match="x=80.*y=20"):
        PolicyConfig(scale_up_freeness=80, scale_down_freeness=20)


def test_defaults_are_valid_and_frozen():
    cfg = SimConfig()
    assert cfg.num_instances == 16 and cfg.block_size == 16 and cfg.policy.dispatch == "llumnix"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_instances = 3  # type: ignore[misc]
    assert dataclasses.replace(cfg.policy, dispatch="infaas").dispatch == "infaas"


def test_latency_defaults_match_reference_anchors():
    lat = LatencyModel()
    assert 0.058 * 0.9 < lat.prefill_ms_per_token * 256 / 1000 < 0.058 * 1.2  # 256-token prefill ~58 ms
    assert 1.8 < lat.prefill_ms_per_token * 8192 / 1000 < 2.2  # 8k-token prefill ~2 s
    step = lat.decode_base_ms + 16 * lat.decode_ms_per_seq + 16 * 512 * lat.decode_ms_per_kv_token
    assert 43 <= step <= 53  # one decode step of a moderate batch
    assert 2000 <= 512 * lat.migration_ms_per_block <= 3500  # blocking copy of 8k tokens
