"""Fixtures of the sources' tests."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.helpers.sources import kaggle_files


@pytest.fixture(scope="package")
def bucket(gcs_emulator):
    from google.cloud import storage

    client = storage.Client()
    bucket = client.create_bucket("lesions")
    for name, data in kaggle_files().items():
        bucket.blob(f"kaggle/{name}").upload_from_string(data)
    bucket.blob("kaggle/.DS_Store").upload_from_string(b"\0")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in kaggle_files(2).items():
            zf.writestr(name, data)
    bucket.blob("archives/kaggle.zip").upload_from_string(archive.getvalue())
    return bucket
