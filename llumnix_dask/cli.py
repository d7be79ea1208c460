"""The `llumnix-dask` command line (typer). Each command imports its heavy modules lazily."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="llumnix-dask",
    help="Serve LLMs on many engine instances with live request rescheduling (Llumnix on Dask).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Serve LLMs on many engine instances with live request rescheduling (Llumnix on Dask)."""
    # A callback keeps typer in multi-command mode even while only one command is registered.


def _tiny_default(name: str):
    from llumnix_dask.config import TinyModelConfig

    return getattr(TinyModelConfig(), name)


@app.command("make-tiny-model")
def make_tiny_model_command(
    directory: str = typer.Argument(..., help="Directory to write the checkpoint into (created if missing)."),
    hidden_size: int = typer.Option(_tiny_default("hidden_size"), help="Model width."),
    layers: int = typer.Option(_tiny_default("num_layers"), help="Transformer layers."),
    heads: int = typer.Option(_tiny_default("num_heads"), help="Attention heads."),
    kv_heads: int = typer.Option(_tiny_default("num_kv_heads"), help="KV heads (GQA when < heads)."),
    intermediate_size: int = typer.Option(_tiny_default("intermediate_size"), help="SwiGLU width."),
    vocab_size: int = typer.Option(_tiny_default("vocab_size"), help="Embedding rows (tokenizer may be smaller)."),
    max_position_embeddings: int = typer.Option(_tiny_default("max_position_embeddings"), help="Context length."),
    tie_word_embeddings: bool = typer.Option(_tiny_default("tie_word_embeddings"), help="Share embedding and LM head."),
    seed: int = typer.Option(_tiny_default("seed"), help="Seed of the random weights."),
) -> None:
    """Write a random-weight LlamaForCausalLM checkpoint (HF format: config.json, model.safetensors,
    tokenizer.json) that the nano engine and transformers both load."""
    from llumnix_dask.config import TinyModelConfig
    from llumnix_dask.engine.nano.tiny_model import make_tiny_model

    try:
        cfg = TinyModelConfig(
            hidden_size=hidden_size,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            intermediate_size=intermediate_size,
            vocab_size=vocab_size,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=tie_word_embeddings,
            seed=seed,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    path = make_tiny_model(directory, cfg)
    from llumnix_dask.engine.nano.loader import read_model_args

    typer.echo(f"wrote {path} ({read_model_args(path).num_params / 1e6:.1f}M parameters)")


@app.command("sim")
def sim_command(
    trace: str = typer.Option("M-M", help="S-S, M-M, L-L, S-L, L-S, ShareGPT or BurstGPT (lengths with those "
                              "traces' statistics), or a ShareGPT .json/.jsonl / BurstGPT .csv file."),
    rate: float = typer.Option(7.5, help="Mean arrival rate, requests per second."),
    arrival: str = typer.Option("poisson", help="poisson or gamma."),
    cv: float = typer.Option(1.0, help="Coefficient of variation of Gamma inter-arrival times."),
    instances: int = typer.Option(16, help="Instances (the starting count when scaling)."),
    requests: int = typer.Option(10_000, help="Requests in the trace."),
    policy: str = typer.Option("llumnix", help="llumnix, infaas, round_robin or random."),
    scale_band: str = typer.Option(None, help="Enable auto-scaling with freeness band 'x,y' (e.g. 25,75)."),
    min_instances: int = typer.Option(1, help="Scaling lower limit."),
    max_instances: int = typer.Option(16, help="Scaling upper limit."),
    high_priority: float = typer.Option(0.0, help="Fraction of high-priority requests."),
    selection: str = typer.Option(None, help="Migration request selection: SR, LR, LCR or FCW (default: the preset's)."),
    preset: str = typer.Option("paper", help="Policy parameters: paper (the paper's runs, per trace) or default."),
    profile: str = typer.Option("a10-llama-7b", help="Engine profile: a10-llama-7b, a10-llama-7b-12k or h100-llama-3-8b."),
    blocks: int = typer.Option(None, help="KV blocks per instance (default: the profile's)."),
    max_batched_tokens: int = typer.Option(None, help="Prefill tokens per step (default: the profile's)."),
    max_batch_size: int = typer.Option(None, help="Requests per batch (default: the profile's)."),
    watermark: float = typer.Option(None, help="Admission watermark, share of blocks kept free (default: the profile's)."),
    seed: int = typer.Option(0, help="Seed of the trace and the random policy."),
    out: str = typer.Option(None, help="Directory for sim.json, sim_requests.csv and sim_cdf.png."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Simulate N instances under a trace with the real policies; print latencies (mean, P99)."""
    from pathlib import Path

    from llumnix_dask.sim.cli import run_sim_command

    try:
        run_sim_command(trace, rate, arrival, cv, instances, requests, policy, scale_band, min_instances,
                        max_instances, high_priority, selection, seed, Path(out) if out else None, progress,
                        preset, profile, blocks, max_batched_tokens, max_batch_size, watermark)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("up")
def up_command(
    instances: int = typer.Option(None, help="Engine instances (default: one per GPU, else 2)."),
    model: str = typer.Option(None, help="HF checkpoint directory (default: the built-in tiny model)."),
    backend: str = typer.Option(
        "nano", help="Engine backend: nano (embedded torch engine), vllm (vLLM engines; needs the vllm extra) "
        "or sim (latency model, no tensors)."
    ),
    block_size: int = typer.Option(None, help="KV block size in tokens (default: the backend's)."),
    num_blocks: int = typer.Option(None, help="KV blocks per instance (default: from the cache budget)."),
    max_model_len: int = typer.Option(None, help="Context length (default: the model's)."),
    max_batch_size: int = typer.Option(None, help="Requests per batch (default: 64)."),
    dtype: str = typer.Option(None, help="float32, float16 or bfloat16 (default: float32)."),
    threads_per_instance: int = typer.Option(
        None, help="CPU threads of each engine instance (default: this machine's cores divided among them)."
    ),
    vllm_arg: list[str] = typer.Option(
        None, "--vllm-arg", help="A vLLM engine argument KEY=VALUE (VALUE as JSON when it parses), repeatable: "
        "--vllm-arg enable_prefix_caching=true --vllm-arg enforce_eager=true."
    ),
    host: str = typer.Option("127.0.0.1", help="HTTP bind address."),
    port: int = typer.Option(8000, help="HTTP port (0 = any free port)."),
    api_key: str = typer.Option(None, help="Require this API key (or set LLUMNIX_DASK_API_KEY)."),
    policy: str = typer.Option("llumnix", help="Dispatch policy: llumnix, infaas, round_robin or random."),
    migration: bool = typer.Option(True, help="Live migration between instances."),
    scheduler: str = typer.Option(None, help="Attach to an existing Dask scheduler (tcp://host:8786)."),
    dashboard_address: str = typer.Option(":8787", help="Dask dashboard address of the embedded cluster."),
) -> None:
    """Start an embedded cluster (or attach to a Dask scheduler) and serve the OpenAI-compatible API."""
    from llumnix_dask.serve.commands import engine_config_from_options, run_up

    try:
        engine = engine_config_from_options(
            backend, model, block_size=block_size, num_blocks=num_blocks, max_model_len=max_model_len,
            max_batch_size=max_batch_size, dtype=dtype, cpu_threads=threads_per_instance, vllm_args=vllm_arg or [],
        )
        run_up(instances, engine, host, port, api_key, policy, scheduler, migration, dashboard_address)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


@app.command("status")
def status_command(
    url: str = typer.Option("http://127.0.0.1:8000", help="A running llumnix-dask HTTP server."),
    scheduler: str = typer.Option(None, help="Ask a Dask scheduler (tcp://host:8786) directly instead."),
    api_key: str = typer.Option(None, help="API key of the server (or LLUMNIX_DASK_API_KEY)."),
    json_output: bool = typer.Option(False, "--json", help="Print the raw snapshot as JSON."),
) -> None:
    """Show the instances, their load and the rolling latencies of a running cluster."""
    from llumnix_dask.serve.commands import run_status

    try:
        run_status(url, scheduler, api_key, json_output)
    except Exception as e:  # connection refused, auth: say what happened, no traceback
        typer.echo(f"error: cannot get the status: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(1) from None


@app.command("bench")
def bench_command(
    url: str = typer.Option("http://127.0.0.1:8000", help="A running OpenAI-compatible server."),
    trace: str = typer.Option("S-S", help="Length preset: S-S, M-M, L-L, S-L or L-S."),
    requests: int = typer.Option(50, help="Requests to send."),
    rate: float = typer.Option(2.0, help="Mean arrival rate, requests per second."),
    arrival: str = typer.Option("gamma", help="poisson or gamma."),
    cv: float = typer.Option(4.0, help="Coefficient of variation of Gamma inter-arrival times."),
    max_input: int = typer.Option(256, help="Clip input lengths (small machines)."),
    max_output: int = typer.Option(64, help="Clip output lengths (small machines)."),
    length_scale: float = typer.Option(0.5, help="Multiply the trace's lengths by this before clipping."),
    high_priority: float = typer.Option(0.0, help="Fraction of high-priority requests."),
    api_key: str = typer.Option(None, help="API key of the server (or LLUMNIX_DASK_API_KEY)."),
    model: str = typer.Option("", help="Model name to send (empty = the server's)."),
    seed: int = typer.Option(0, help="Seed of the trace and the prompts."),
    out: str = typer.Option("bench_results.json", help="Where to write the JSON results."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Drive a running server with a trace over HTTP; print TTFT/TPOT/E2E mean and P99; write JSON."""
    from llumnix_dask.serve.commands import run_bench

    try:
        run_bench(url, trace, requests, rate, arrival, cv, max_input, max_output, length_scale, high_priority,
                  api_key, model, seed, out, progress)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
