"""The ``leadscore`` command line: thin commands over the package's functions."""

from __future__ import annotations

import typer

from leadscore import __version__

app = typer.Typer(
    name="leadscore",
    help="Lead conversion prediction for education CRMs: generate, resolve, featurise, "
    "train, score, serve, route and monitor.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Lead conversion prediction service. Each command has its own --help."""


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)
