"""Fixtures of the data stage's tests."""

import pytest

from components.core.settings import DataConfig
from components.data.ingest import ingest
from components.data.normalize import normalize
from components.data.split import split
from tests.helpers import write_class_folder


@pytest.fixture(scope="package")
def normalized(tmp_path_factory):
    """Small generated images of three classes, one of them short, through ingest, split and
    normalize: (root folder, data config, normalize's meta)."""
    root = tmp_path_factory.mktemp("norm")
    data = write_class_folder(root / "data", classes=("melanoma", "nevus", "dermatofibroma"), per_class=9, size=40)
    # An unbalanced set: remove most dermatofibroma images.
    for p in sorted((data / "dermatofibroma").iterdir())[5:]:
        p.unlink()
    cfg = DataConfig(image_size=32, val_fraction=0.2, test_fraction=0.2, num_shards=2)
    ingest(str(data), cfg, root / "manifest")
    split(root / "manifest", cfg, root / "splits")
    meta = normalize(root / "splits", cfg, root / "normalized")
    return root, cfg, meta
