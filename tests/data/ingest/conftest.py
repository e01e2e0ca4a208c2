from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.corpus import build_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The messy generated corpus (tests/helpers/corpus.py), made once per module."""
    return build_corpus(tmp_path_factory.mktemp("corpus"))
