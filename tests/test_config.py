import pytest

from pipeline.config import Config, ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\ndata:\n  image_size: 96\ntrain:\n  epochs: 3\n")
    cfg = Config.load(path, ["train.epochs=5", "data.class_map={mel: melanoma}", "augment.enabled=false"])
    assert cfg.name == "x"
    assert cfg.data.image_size == 96
    assert cfg.train.epochs == 5
    assert cfg.data.class_map == {"mel": "melanoma"}
    assert cfg.augment.enabled is False


def test_round_trip_through_kfp_struct_floats():
    # KFP hands a dict parameter over as a protobuf Struct: every number becomes a float.
    raw = Config().to_dict()
    raw["train"]["epochs"] = 7.0
    assert Config.from_dict(raw).train.epochs == 7


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch' \\(did you mean 'epochs'\\? known: alpha, "),
    ("nosuch.key=1", "unknown config key"),
    ("train.epochs=three", "train.epochs must be an integer"),
    ("train.epochs", "is not key=value"),
    ("data.resize_mode=stretch", "data.resize_mode must be pad or crop, not 'stretch'"),
    ("train.imbalance=smote", "train.imbalance must be none, class_weight, focal, balanced_sampling or logit_adjusted"),
    ("data.format=dicom", "data.format must be auto, folders, ham10000, isic2019 or siim2020"),
    ("train.frozen_epochs=99", r"train: frozen_epochs \(99\) must be at most epochs"),
    ("data.label_conflict_policy=vote", "data.label_conflict_policy must be quarantine or majority"),
    ("data.val_fraction=0.9", "add up to less than 1"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        Config.load(None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(bad)


def test_flat_params_for_mlflow():
    params = Config().flat_params()
    assert params["train.model"] == "seed_cnn"
    assert params["data.class_map"] == "{}"
    assert all(isinstance(v, str) for v in params.values())


@pytest.mark.parametrize("name", ["demo", "isic9", "ham10000"])
def test_shipped_configs_load(name):
    cfg = Config.load(f"configs/{name}.yaml")
    assert cfg.name == name


def test_ensemble_members_inherit_the_train_section_and_are_checked_like_it():
    # As KFP hands it back: numbers as floats.
    cfg = Config.from_dict({"train": {"model": "mobilenet_v2", "alpha": 0.5, "epochs": 9, "seed": 1,
                                      "ensemble": [{"alpha": 0.35, "seed": 2.0}, {"model": "mobilenet", "alpha": 0.25}]}})
    members = cfg.train.members()
    assert [(m.model, m.alpha, m.seed, m.epochs) for m in members] == [
        ("mobilenet_v2", 0.5, 1, 9), ("mobilenet_v2", 0.35, 2, 9), ("mobilenet", 0.25, 1, 9)]
    assert all(m.ensemble == [] for m in members[1:])
    assert Config.load(None, ["train.ensemble=[{seed: 5}]"]).train.members()[1].seed == 5
    assert '"alpha": 0.35' in cfg.flat_params()["train.ensemble"]


@pytest.mark.parametrize("ensemble, message", [
    ("resnet", "train.ensemble must be a list"),
    ([3], r"train.ensemble: member 0 must be a mapping of train settings"),
    ([{"alpah": 0.35}], r"unknown config key 'train.ensemble\[0\].alpah' \(did you mean 'alpha'"),
    ([{}, {"online_zoom": 1.5}], r"train.ensemble\[1\].online_zoom must be below 1, got 1.5"),
    ([{"ensemble": [{}]}], r"train.ensemble: member 0: a member cannot have members"),
])
def test_bad_ensemble_members_are_one_line_errors(ensemble, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"train": {"ensemble": ensemble}})
