"""Fixtures of the training stage's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_data import make_tiny_shards


@pytest.fixture(scope="package")
def normalized(tmp_path_factory) -> Path:
    return make_tiny_shards(tmp_path_factory.mktemp("tiny"))
