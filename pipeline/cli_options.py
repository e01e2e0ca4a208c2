"""What several ``lesionpipe`` commands share: the config options and how they load."""

from __future__ import annotations

import os
import signal
import sys

import click

from components.core.errors import UserError
from pipeline.config import RunConfig

DEFAULT_OUTPUT_DIR = "lesion_outputs"
TRACKING_PRECEDENCE = (
    "the config's mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else mlflow.db in the working folder"
)


def exit_interrupted(status: int) -> None:
    """Exit at once after Ctrl-C or SIGTERM: with TensorFlow loaded the interpreter's own
    clean-up takes seconds (4.7 s measured on a busy 2-core machine) and has nothing left
    to save (the steps are gone, the MLflow run is ended)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class LesionCLI(click.Group):
    """Turns user mistakes into one ``Error:`` line and exit status 1, never a traceback;
    lists its commands with each one's first sentence whole, never cut with "..."."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT, not click's "Aborted!" and 1
            click.echo("Interrupted (Ctrl-C).", err=True)
            exit_interrupted(128 + signal.SIGINT)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (name, command.get_short_help_str(limit=10_000))
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def config_options(
    config_help: str = "YAML run config (default: the built-in defaults: synthetic data).",
    set_example: str = "train.epochs=3",
):
    """``--config`` and ``--set``, with help that says what this command does without a
    config and a key it reads."""

    def decorate(func):
        func = click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Override a config value, e.g. --set {set_example} (repeatable).",
        )(func)
        return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=config_help)(func)

    return decorate


def load_config(config_path: str | None, overrides: tuple[str, ...], data: str | None = None) -> RunConfig:
    cfg = RunConfig.load(config_path, overrides)
    if data is not None:
        cfg = cfg.with_overrides([f"data.source={data}"])
    return cfg
