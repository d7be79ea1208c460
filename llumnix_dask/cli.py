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


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
