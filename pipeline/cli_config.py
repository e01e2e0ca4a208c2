"""``lesionpipe config show``: the effective run config, every default filled in."""

from __future__ import annotations

import click
import yaml

from pipeline.cli_options import LesionCLI, config_options, load_config


@click.group(cls=LesionCLI)
def config() -> None:
    """Inspect run configs."""


@config.command()
@config_options(set_example="train.epochs=3")
def show(config_path, overrides):
    """Print the effective config as YAML: the file's values, then the --set overrides, and
    every other key at its default. The file's relative paths are shown resolved against its
    folder, --set values as given."""
    cfg = load_config(config_path, overrides)
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), nl=False)


@config.command()
def docs():
    """Print the reference of every config key (Markdown: docs/configuration.md), generated
    from the config classes: key, type, default and what it does."""
    from pipeline.config_docs import markdown

    click.echo(markdown(), nl=False)
