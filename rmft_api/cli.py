"""The `rmft-api` command line: parse → call one library function → render.

Heavy modules (torch, transformers, openai) are imported inside the commands that need them, so
`rmft-api --help` stays fast and torch-free. An `RmftError` is printed as one line, no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rmft_api.errors import RmftError

app = typer.Typer(
    name="rmft-api",
    help="Iterative Regret-Minimization Fine-Tuning: post-train LLMs into better decision agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file.", dir_okay=False)
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: --set env.horizon=200.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]


@app.command()
def version() -> None:
    """Print the package version."""
    from rmft_api import __version__

    typer.echo(__version__)


# ---------------------------------------------------------------- commands are added above


def main() -> None:
    """Console entry point: run the app, turning RmftError into a one-line message."""
    try:
        app()
    except RmftError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted; state written so far is kept", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
