"""Images by digest: what `make push` records is what compile puts in the pipeline, and a
step on a tag is named in one line."""

import json

import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.images import main as images_main

DIGEST = "sha256:" + "ab" * 32


def test_compile_uses_recorded_digests_and_names_images_left_on_a_tag(tmp_path, monkeypatch):
    digests = tmp_path / "image-digests.json"
    monkeypatch.setenv("LESION_IMAGE_DIGESTS", str(digests))
    cpu, gpu = "ghcr.io/lesion-pipeline/lesion-pipeline:0.1.0", "ghcr.io/lesion-pipeline/lesion-pipeline-gpu:0.1.0"
    assert images_main(["record", cpu, f"ghcr.io/lesion-pipeline/lesion-pipeline@{DIGEST}"]) == 0
    assert json.loads(digests.read_text()) == {cpu: f"ghcr.io/lesion-pipeline/lesion-pipeline@{DIGEST}"}
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", "configs/cluster.yaml", "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec, _ = yaml.safe_load_all(out.read_text())
    images = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert images["exec-train-step"] == gpu  # no digest recorded for it: stays on its tag ...
    assert {i for n, i in images.items() if n != "exec-train-step"} == {
        f"ghcr.io/lesion-pipeline/lesion-pipeline@{DIGEST}"
    }
    # ... and says so, in one line (was: every step on a tag, silently).
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: steps run by tag")]
    assert len(notes) == 1 and notes[0].endswith(gpu)


def test_a_bad_digest_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LESION_IMAGE_DIGESTS", str(tmp_path / "d.json"))
    assert images_main(["record", "repo:1", "repo@sha256:short"]) == 2
    assert not (tmp_path / "d.json").exists()
