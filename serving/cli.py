"""``leadscore serve``: run the BentoML service on the work folder's champion and features."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from leadscore.cli_common import WorkdirOption, console, fail, settings_for


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
) -> None:
    """Serve POST /predict, /predict_batch and /events (OpenAPI docs at /docs)."""
    from serving.auth import resolve_api_key
    from serving.model_store import bentoml_home

    settings = settings_for(workdir)
    home = bentoml_home(settings)
    os.environ["BENTOML_HOME"] = home
    key, source = resolve_api_key(settings, create=True)
    try:
        from serving.model_store import import_champion

        tag, version = import_champion(settings)
        console.print(f"champion: registry version {version} → BentoML model {tag}")
    except Exception as exc:
        console.print(f"[yellow]no champion imported[/] ({exc}); /readyz will fail until one is")
    console.print(f"API key from {source}. Call it with:\n"
                  f"  curl -H 'Authorization: Bearer <key from {source}>' "
                  f"http://{host}:{port}/readyz")
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:LeadScoring",
               "--host", host, "--port", str(port)]
    try:
        completed = subprocess.run(
            command, env=service_environment(settings.workdir, key, home),
            cwd=settings.project_root, check=False,
        )
    except KeyboardInterrupt:
        return
    if completed.returncode not in (0, -2, 130):
        fail(f"the service stopped with exit code {completed.returncode}")
