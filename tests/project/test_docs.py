"""The user documentation says only what is true: every `lesionpipe` command and option
in README.md and docs/*.md exists (each command's --help run in-process), every config
key named exists, every relative link (and its #anchor) resolves, and the configuration
reference is what the code generates. The checks are shown to catch a planted mistake."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import RunConfig
from pipeline.config_docs import all_keys, markdown

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECTIONS = tuple(RunConfig.model_fields)
# Dotted names in the docs that are MLflow tags, not config keys (each must appear in the code).
MLFLOW_TAGS = {"data.synthetic", "data.class_size_warnings", "mlflow.experimentKind"}
FILE_NAMES = {"mlflow.db"}
# Written on other branches of the same change; checked like any doc once they exist.
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
KEY = re.compile(rf"^(?:{'|'.join(SECTIONS)})\.[A-Za-z_][\w.]*")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def command_lines(text: str) -> list[str]:
    """Every `lesionpipe ...` command: the lines of fenced code blocks (continuations
    joined) and inline code spans."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("lesionpipe "):
                found.append(line)
    prose = FENCE.sub("", text)
    found += [span for span in INLINE.findall(prose) if span.startswith("lesionpipe")]
    return found


def command_problems(line: str) -> list[str]:
    """What in ``line`` is not a lesionpipe command, option or config key."""
    try:
        tokens = shlex.split(line, comments=True)[1:]
    except ValueError:
        tokens = line.split()[1:]
    command: click.Command = main
    path: list[str] = []
    problems = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("-"):
            name, _, inline_value = token.partition("=")
            option = next((p for p in command.params if isinstance(p, click.Option) and name in p.opts), None)
            if name in ("-h", "--help"):
                pass
            elif option is None:
                problems.append(f"lesionpipe {' '.join(path)}: no option {name!r}")
            elif not option.is_flag and not inline_value:
                value = tokens[i + 1] if i + 1 < len(tokens) else ""
                if option.name == "overrides":
                    problems += key_problems(value.split("=", 1)[0])
                i += 1
        elif isinstance(command, click.Group):
            if token not in command.commands:
                problems.append(f"lesionpipe {' '.join(path)}: no command {token!r}")
                break
            command = command.commands[token]
            path.append(token)
        i += 1
    if not problems:
        result = CliRunner().invoke(main, [*path, "--help"])
        if result.exit_code != 0:
            problems.append(f"lesionpipe {' '.join(path)} --help failed: {result.output}")
    return problems


def key_problems(key: str) -> list[str]:
    key = re.sub(r"\[\d+\]", "", key)
    if "<" in key or key.endswith((".*", ".KEY")) or key in MLFLOW_TAGS | FILE_NAMES:
        return []
    return [] if key in all_keys() else [f"no config key {key!r}"]


def config_keys_named(text: str) -> list[str]:
    """Dotted config keys in backticks (`train.epochs`, `data.format=...`)."""
    keys = []
    for span in INLINE.findall(text):
        for word in re.split(r"[\s,]+", span):
            match = KEY.match(word.split("=", 1)[0])
            if match and not span.startswith("lesionpipe"):
                keys.append(match.group(0).rstrip("."))
    return keys


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def link_problems(path: Path, text: str) -> list[str]:
    problems = []
    for target in LINK.findall(FENCE.sub("", text)):
        if "://" in target or target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{path.name}: link {target!r} -> {resolved} does not exist")
        elif anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", resolved.read_text()), re.M)
            if anchor not in {slug(h) for h in headings}:
                problems.append(f"{path.name}: link {target!r}: no heading #{anchor} in {resolved.name}")
    return problems


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_command_and_option_in_the_docs_exists(path):
    problems = [f"{line}: {p}" for line in command_lines(path.read_text()) for p in command_problems(line)]
    assert problems == []


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_config_key_in_the_docs_exists(path):
    assert [p for key in config_keys_named(path.read_text()) for p in key_problems(key)] == []


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_relative_link_resolves(path):
    assert link_problems(path, path.read_text()) == []


def test_the_mlflow_tags_let_through_are_tags_the_code_sets():
    code = "".join(p.read_text() for p in (ROOT / "components").rglob("*.py"))
    for tag in MLFLOW_TAGS:
        assert tag in code or tag.split(".", 1)[1] in code, tag


def test_the_configuration_reference_is_what_the_code_generates():
    assert (ROOT / "docs" / "configuration.md").read_text() == markdown(), (
        "regenerate it: lesionpipe config docs > docs/configuration.md"
    )
    documented = set(re.findall(r"`([\w.]+)`", markdown()))
    leaves = {k for k in all_keys() if not any(other.startswith(k + ".") for other in all_keys())}
    assert {k for k in leaves if not k.startswith("cluster.resources.")} <= documented


def test_the_readme_is_short_links_every_doc_and_tests_as_ci_does():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(readme)}
    assert {p.name for p in (ROOT / "docs").glob("*.md")} | {"architecture.md", "metrics.md"} <= linked
    [ci_test] = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if "pytest" in line and not line.lstrip().startswith("#")
    ]
    assert any(ci_test in block.splitlines() for block in FENCE.findall(readme))
    assert not re.search(r"\b[0-9a-f]{7,40}\b", readme), "no commit hash in the README: docs/results.md has them"


# ---- the checks catch what they are for ------------------------------------------


@pytest.mark.parametrize(
    "planted, expected",
    [
        ("lesionpipe rnu --config configs/demo.yaml", "no command 'rnu'"),
        ("lesionpipe run --confg configs/demo.yaml", "no option '--confg'"),
        ("lesionpipe schedule pase ID --host http://localhost:8080", "no command 'pase'"),
        ("lesionpipe predict --model URI --output p.csv IMAGE", "no option '--output'"),
        ("lesionpipe run --set train.epoch=3", "no config key 'train.epoch'"),
        ("lesionpipe config shw", "no command 'shw'"),
    ],
)
def test_a_misspelt_command_option_or_key_in_a_code_block_is_caught(planted, expected):
    text = f"Run it:\n\n```bash\n{planted}   # planted\n```\n"
    [line] = command_lines(text)
    assert any(expected in p for p in command_problems(line)), command_problems(line)


def test_a_misspelt_key_and_a_broken_link_in_prose_are_caught(tmp_path):
    assert key_problems(config_keys_named("set `train.epoch` to 3")[0]) == ["no config key 'train.epoch'"]
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    doc = tmp_path / "doc.md"
    text = "[ok](other.md#a-section) [gone](missing.md) [bad anchor](other.md#no-such)"
    problems = link_problems(doc, text)
    assert len(problems) == 2
    assert "link 'missing.md'" in problems[0] and "no heading #no-such in other.md" in problems[1]
