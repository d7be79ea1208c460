import dataclasses

import pytest

from llumnix_dask.config import EngineConfig, MigrationConfig, PolicyConfig, ServeConfig
from llumnix_dask.sim_config import LatencyModel, SimConfig


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


def test_engine_profiles_are_named_and_the_a10_one_matches_the_papers_testbed():
    from llumnix_dask.sim_config import ENGINE_PROFILES, engine_profile

    a10 = engine_profile("a10-llama-7b")
    assert 785 <= a10.num_blocks <= 792 and a10.max_batched_tokens == 12_800 and a10.block_size == 16
    assert engine_profile("a10-llama-7b-12k").num_blocks == 792 and ENGINE_PROFILES["a10-llama-7b-12k"].max_batched_tokens == 12_000
    h100 = engine_profile("h100-llama-3-8b")
    assert h100.num_blocks > 10 * a10.num_blocks and h100.latency.decode_step_ms(1, 1000) < a10.latency.decode_step_ms(1, 1000)
    with pytest.raises(ValueError, match="unknown profile 'b200'.*a10-llama-7b"):
        engine_profile("b200")
    cfg = SimConfig.for_profile("h100-llama-3-8b", num_instances=4)
    assert cfg.blocks_per_instance == h100.num_blocks and cfg.latency == h100.latency and cfg.num_instances == 4
    assert SimConfig().blocks_per_instance == a10.num_blocks  # the simulator's default is the paper's testbed


def test_paper_preset_has_the_artifacts_parameters():
    from llumnix_dask.sim_config import paper_policy

    for trace, threshold in (("M-M", 10), ("S-L", 10), ("L-L", 3), ("S-S", 3), ("ShareGPT", 3), (None, 3)):
        p = paper_policy(trace)
        assert p.migrate_out_freeness == p.migrate_in_freeness == threshold, trace
    p = paper_policy("L-L", dispatch="infaas")
    assert p.dispatch == "infaas" and p.request_selection == "LCR" and p.priority_instance_blocks == 100
    assert p.migration_interval_s == pytest.approx(0.2)
    cfg = SimConfig.paper("M-M", dispatch="round_robin")
    assert cfg.policy.dispatch == "round_robin" and cfg.blocks_per_instance == 785 and cfg.max_batched_tokens == 12_800
    with pytest.raises(ValueError, match="priority_instance_blocks"):
        PolicyConfig(priority_instance_blocks=-1)


def test_latency_defaults_match_the_artifacts_measurements():
    lat = LatencyModel()
    # recompute of 256 / 8k tokens: 58 ms / ~2.0 s (the paper's Fig. 10 data)
    assert 0.058 * 0.9 < lat.engine_prefill_ms(256) / 1000 < 0.058 * 1.2
    assert 1.8 < lat.engine_prefill_ms(8192) / 1000 < 2.2
    # a short prompt still reads every weight once: no cheaper than a decode step without KV
    assert lat.engine_prefill_ms(35) == pytest.approx(lat.engine_decode_ms(1, 0))
    # the engine's own step timer on ~8.2k KV tokens (Fig. 10's 7B series): 43.6 ms for 1 x 8k, 46.8 for 32 x 256
    assert lat.engine_decode_ms(1, 8192) == pytest.approx(43.6, abs=1.5)
    assert lat.engine_decode_ms(32, 8192) == pytest.approx(46.8, abs=1.0)
    # what a client sees adds the serving loop's work, and more of it for a bigger batch
    assert lat.decode_step_ms(16, 4096) > lat.engine_decode_ms(16, 4096) > lat.engine_decode_ms(1, 4096)
    assert lat.decode_step_ms(16, 4096) - lat.engine_decode_ms(16, 4096) > lat.step_overhead(1)
    assert lat.prefill_step_ms(512) == pytest.approx(lat.engine_prefill_ms(512) + lat.step_overhead(1))
    # the artifact's 7B blocking copy of 8k tokens (512 blocks): 1.68 s
    assert 1.5 <= 512 * lat.migration_ms_per_block / 1000 <= 1.9
