"""``leadscore serve``: run the BentoML service on the work folder's champion and features.

Wire into the main CLI with ``app.command("serve")(serve)``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from commands.common import WorkdirOption, console, fail, settings_for


def service_environment(workdir: Path, api_key: str, bento_home: str) -> dict[str, str]:
    """Environment of the service process: the work folder, the key and BentoML's home."""
    env = dict(os.environ)
    env.update({"LEADSCORE_WORKDIR": str(workdir), "LEADSCORE_API_KEY": api_key,
                "BENTOML_HOME": bento_home, "BENTOML_DO_NOT_TRACK": "True"})
    return env


def serve(
    workdir: WorkdirOption = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    metrics_root: Annotated[Path | None, typer.Option(
        help="RAM-backed folder for the Prometheus files (default /dev/shm, else the temp "
             "folder); a fresh sub-folder per start, removed at exit.",
        file_okay=False)] = None,
) -> None:
    """Serve POST /predict, /predict_batch, /events and /reload (docs at /docs).

    Uses LEADSCORE_API_KEY (or api_key in the config); without one, creates a key on first use
    in <workdir>/.leadscore_api_key (mode 0600). Imports the MLflow champion into BentoML's
    model store first (the import records the registry version). Then this process becomes
    the server (``python -m serving.launcher``, by exec): SIGTERM or SIGINT sent to it stop the
    whole server. Exit code 2 when it cannot start (e.g. no room for its metrics files).
    """
    from serving.auth import resolve_api_key
    from serving.model_store import bentoml_home

    settings = settings_for(workdir, services=("postgres",))
    home = bentoml_home(settings)
    os.environ["BENTOML_HOME"] = home  # before BentoML first reads it
    try:
        key, source = resolve_api_key(settings, create=True)
    except OSError as exc:
        fail(f"cannot create the API key file in {settings.workdir}: {exc}")
    from serving.model_store import import_champion

    try:
        tag, version = import_champion(settings)
        console.print(f"champion: registry version {version} → BentoML model {tag}")
    except Exception as exc:  # noqa: BLE001 - serve anyway; /readyz says not ready
        console.print(f"[yellow]no champion imported[/] ({type(exc).__name__}: {exc}); "
                      "/readyz answers 503 until `leadscore train` registers one and "
                      "POST /reload is called")
    key_hint = ("$LEADSCORE_API_KEY" if source == "environment/config"
                else f"$(cat {source})")
    console.print(
        f"API key from {source}. Call the service with:\n"
        f"  curl -H \"Authorization: Bearer {key_hint}\" -H 'Content-Type: application/json' "
        f"-d @submission.json http://{host}:{port}/predict\n"
        f"OpenAPI docs: http://{host}:{port}/docs (no key needed)"
    )
    from serving.launcher import SERVICE_TARGET, launch_command

    command = launch_command(SERVICE_TARGET, host, port, metrics_root)
    sys.stdout.flush()
    sys.stderr.flush()
    # become the server (same process id): a supervisor's or container's SIGTERM reaches
    # BentoML's arbiter, which stops the workers; no child is left holding the port
    os.chdir(settings.project_root)
    os.execve(command[0], command, service_environment(settings.workdir, key, home))
