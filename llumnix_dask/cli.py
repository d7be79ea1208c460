"""The `llumnix-dask` command line (typer). Each command imports its heavy modules lazily."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="llumnix-dask",
    help="Serve LLMs on many engine instances with live request rescheduling (Llumnix on Dask).",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
