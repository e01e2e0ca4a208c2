"""train.weights on gs://, against the real GCS emulator: the local cache is keyed by the
object's generation and md5, so two buckets' w.h5 never collide and a re-upload is
fetched; a download lands under its final name only when complete; Google's errors are
one line."""

import pytest
from google.cloud import storage

from components.training.weights import ModelError, resolve_weights


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


def test_gs_weights_are_cached_by_generation_and_md5_not_by_name(gcs_emulator, keras_home):
    """Was: the cache was keyed by the file name alone: bucket b's w.h5 was bucket a's,
    and a new upload of w.h5 was never fetched."""
    client = storage.Client()
    first, second = client.create_bucket("weights-a"), client.create_bucket("weights-b")
    first.blob("w.h5").upload_from_string(b"weights of a")
    second.blob("w.h5").upload_from_string(b"weights of b")
    from_a, from_b = resolve_weights("gs://weights-a/w.h5"), resolve_weights("gs://weights-b/w.h5")
    assert open(from_a, "rb").read() == b"weights of a" and open(from_b, "rb").read() == b"weights of b"
    assert from_a.endswith("/w.h5")  # Keras reads the format from the suffix

    first.blob("w.h5").upload_from_string(b"weights of a, retrained")
    assert open(resolve_weights("gs://weights-a/w.h5"), "rb").read() == b"weights of a, retrained"
    assert resolve_weights("gs://weights-b/w.h5") == from_b  # unchanged: not downloaded again


def test_a_download_cut_short_is_never_used(gcs_emulator, keras_home):
    """A download goes to a temporary name, renamed when whole, and a cached file whose
    md5 is not the object's is fetched again (was: written in place, so a killed
    download left a truncated file that was used from then on)."""
    bucket = storage.Client().create_bucket("weights-cut")
    bucket.blob("w.h5").upload_from_string(b"whole weights file")
    path = resolve_weights("gs://weights-cut/w.h5")
    with open(path, "r+b") as f:  # what a download killed midway leaves when written in place
        f.truncate(5)
    assert open(resolve_weights("gs://weights-cut/w.h5"), "rb").read() == b"whole weights file"
    assert [str(p) for p in keras_home.rglob("*") if p.is_file()] == [path]  # no temporary file left


@pytest.mark.parametrize(
    "uri, message",
    [
        ("gs://weights-nosuch-bucket/w.h5", r"^weights file not found: gs://weights-nosuch-bucket/w\.h5$"),
        ("gs://weights-errors/missing.h5", r"^weights file not found: gs://weights-errors/missing\.h5$"),
        ("gs:///w.h5", r"^train\.weights gs:///w\.h5: no bucket"),
        ("gs://weights-errors", r"^train\.weights gs://weights-errors: no object"),
    ],
)
def test_google_errors_are_one_line(gcs_emulator, keras_home, uri, message):
    client = storage.Client()
    if not client.lookup_bucket("weights-errors"):
        client.create_bucket("weights-errors")
    with pytest.raises(ModelError, match=message) as raised:
        resolve_weights(uri)
    assert "\n" not in str(raised.value)
