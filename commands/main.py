"""The ``leadscore`` command line: thin commands over the package's functions."""

from __future__ import annotations

from typing import Annotated

import typer

from commands.common import WorkdirOption, fail, settings_for
from commands.doctor import doctor
from commands.drift import drift
from commands.features import features_app
from commands.generate import generate
from commands.identity import identity_command, ingest_command
from commands.outbox import app as outbox_app
from commands.portrait import (
    access_log_command,
    agent_token_command,
    audience_app,
    portrait_app,
)
from commands.route import app as route_app
from commands.serve import serve
from commands.train import score_command, train_command
from commands.uplift import app as uplift_app
from leadscore import __version__
from pipelines.demo import CLI_REPLAY_WEEKS

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


app.command("generate")(generate)
app.command("identity")(identity_command)
app.command("ingest")(ingest_command)
app.add_typer(route_app, name="route")
app.add_typer(features_app, name="features")
app.add_typer(uplift_app, name="uplift")
app.command("train")(train_command)
app.command("score")(score_command)
app.command("drift")(drift)
app.command("serve")(serve)
app.command("doctor")(doctor)
app.add_typer(outbox_app, name="outbox")
app.add_typer(portrait_app, name="portrait")
app.add_typer(audience_app, name="audience")
app.command("access-log")(access_log_command)
app.command("agent-token")(agent_token_command)


@app.command()
def demo(
    workdir: WorkdirOption = None,
    leads: Annotated[int, typer.Option("--leads", min=500, help="Leads to generate.")] = 20000,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: settings).")] = None,
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials for tuning.")] = 20,
    drift: Annotated[bool, typer.Option(
        "--drift", help="Shift the channel mix and behaviour in the last third of the history "
        "(as `leadscore generate --drift`): the replayed weeks then drift from the training "
        "reference and the weekly report flags them.")] = False,
    replay_weeks: Annotated[int, typer.Option(
        "--replay-weeks", min=1, max=10, help="Weeks of traffic replayed through the service "
        "(the model is trained as of their start); from 6 on, the weekly report of the last "
        "one also rates the leads whose 30-day outcome has closed.")] = CLI_REPLAY_WEEKS,
) -> None:
    """The main job: generate a CRM history and run the whole pipeline on it."""
    from pipelines.demo import run_demo

    settings = settings_for(workdir)
    try:
        run_demo(settings, n_leads=leads, seed=settings.seed if seed is None else seed,
                 trials=trials, drift=drift, replay_weeks=replay_weeks)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
