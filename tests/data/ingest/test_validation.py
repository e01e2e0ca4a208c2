"""Ingest on a generated corpus of broken and odd files: every case gets the status and
reason it should, and every file on disk is accounted for."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.core.settings import DataConfig
from components.data.imaging import ImageError, decode_rgb, decode_rgb_reduced
from components.data.ingest import IngestError, ingest
from tests.helpers.corpus import EXPECTED, png_header_only, save, write
from tests.helpers.images import jpeg_bytes, lesion


@pytest.fixture(scope="module")
def result(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest_out")
    return ingest(str(corpus), DataConfig(), out), out


def test_every_file_on_disk_is_accounted_for(corpus, result):
    res, _ = result
    on_disk = sum(len(files) for _, _, files in os.walk(corpus))
    r = res.report
    assert r["files_found"] == on_disk == len(EXPECTED) == len(res.manifest)
    assert r["files_found"] == r["ingested"] + r["quarantined"] + r["ignored"]
    set_aside = res.manifest[res.manifest.status != "ingested"]
    assert (set_aside.reason != "").all() and (set_aside.reason_code != "").all()
    assert len(r["quarantined_files"]) == r["quarantined"] and len(r["ignored_files"]) == r["ignored"]


def test_each_case_gets_its_status_and_reason(result):
    manifest = result[0].manifest.set_index("relpath")
    got = {p: (row.status, row.reason_code) for p, row in manifest.iterrows()}
    assert got == EXPECTED


def test_images_are_measured_after_exif_orientation(result):
    manifest = result[0].manifest.set_index("relpath")
    assert tuple(manifest.loc["Train/melanoma/rotated.jpg", ["width", "height"]]) == (48, 80)
    assert manifest.loc["Train/nevus/odd/scan.TIFF", "image_format"] == "TIFF"


def test_labels_splits_and_vocabulary(result):
    manifest = result[0].manifest.set_index("relpath")
    assert manifest.loc["Test/MEL/mel_8.jpg", ["label", "source_label", "split"]].tolist() == [
        "melanoma",
        "MEL",
        "test",
    ]
    assert manifest.loc["Train/nevus/odd/gray.png", ["label", "split"]].tolist() == ["nevus", "train"]
    report = result[0].report
    assert report["classes"] == ["melanoma", "nevus"]
    # Before validation counts every labelled image, the broken ones included.
    assert report["class_counts_before"]["melanoma"] > report["class_counts"]["melanoma"]


def test_duplicate_conflict_and_leak_groups(result):
    res, _ = result
    r = res.report
    assert (r["duplicate_groups"], r["label_conflict_groups"], r["split_leak_groups"]) == (4, 2, 2)
    manifest = res.manifest.set_index("relpath")
    assert (
        manifest.loc["Train/melanoma/mel_0_copy.jpg", "duplicate_of"] == manifest.loc["Train/melanoma/mel_0.jpg", "uri"]
    )
    assert manifest.loc["Train/nevus/leak.jpg", "duplicate_of"] == manifest.loc["Test/nevus/leak.jpg", "uri"]


def test_near_duplicates_are_grouped_not_removed(result):
    manifest = result[0].manifest.set_index("relpath")
    group = manifest.loc["Train/melanoma/near_a.jpg", "near_duplicate_group"]
    assert group and manifest.loc["Train/melanoma/near_b.png", "near_duplicate_group"] == group
    assert (manifest.near_duplicate_group == group).sum() == 2
    assert manifest.loc["Train/melanoma/near_b.png", "status"] == "ingested"
    assert result[0].report["near_duplicate_groups"] >= 1


def test_outputs_written(result):
    res, out = result
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == res.report["files_found"]
    assert {"uri", "label", "group_id", "split", "md5", "width", "height", "status", "reason"} <= set(manifest.columns)
    report = json.loads((out / "report.json").read_text())
    for key in (
        "files_found",
        "ingested",
        "quarantined",
        "ignored",
        "duplicate_groups",
        "label_conflict_groups",
        "split_leak_groups",
        "near_duplicate_groups",
        "class_counts_before",
        "class_counts",
    ):
        assert key in report
    page = (out / "report.html").read_text()
    assert "bomb.png" in page and "label_conflict" in page and "Samples per class" in page
    assert page.count("data:image/jpeg;base64,") >= 10 and "data:image/png;base64," in page
    markdown = (out / "report.md").read_text()
    assert "| melanoma |" in markdown and "Train/Test leaks" in markdown


def test_conflict_majority_and_leak_quarantine_policies(tmp_path):
    for i in range(3):
        write(tmp_path, f"Train/melanoma/m{i}.jpg", jpeg_bytes(lesion(i)))
        write(tmp_path, f"Train/nevus/n{i}.jpg", jpeg_bytes(lesion(i, "nevus")))
    shared = jpeg_bytes(lesion(50))
    for relpath in ("Train/melanoma/a.jpg", "Train/melanoma/b.jpg", "Train/nevus/c.jpg"):
        write(tmp_path, relpath, shared)
    leak = jpeg_bytes(lesion(51, "nevus"))
    write(tmp_path, "Train/nevus/leak.jpg", leak)
    write(tmp_path, "Test/nevus/leak.jpg", leak)
    cfg = DataConfig(label_conflict_policy="majority", split_leak_policy="quarantine")
    manifest = ingest(str(tmp_path), cfg).manifest.set_index("relpath")
    assert manifest.loc[["Train/melanoma/a.jpg", "Train/melanoma/b.jpg", "Train/nevus/c.jpg"], "status"].tolist() == [
        "ingested",
        "ignored",
        "quarantined",
    ]
    assert manifest.loc[["Train/nevus/leak.jpg", "Test/nevus/leak.jpg"], "reason_code"].tolist() == ["split_leak"] * 2
    assert (manifest.loc[["Train/nevus/leak.jpg", "Test/nevus/leak.jpg"], "status"] == "quarantined").all()


def test_minimum_size_and_pixel_limit_are_configurable(tmp_path):
    for cls in ("melanoma", "nevus"):
        for i in range(2):
            save(tmp_path, f"{cls}/{i}.png", lesion(i, cls, size=64))
    save(tmp_path, "nevus/big.png", lesion(9, "nevus", size=120))
    cfg = DataConfig(min_image_size=16, max_image_pixels=100 * 100)
    manifest = ingest(str(tmp_path), cfg).manifest.set_index("relpath")
    assert manifest.loc["nevus/big.png", "reason_code"] == "too_many_pixels"
    assert (manifest.drop(index="nevus/big.png").status == "ingested").all()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I", "I;16", "1", "F"])
def test_decode_rgb_converts_every_mode(mode):
    img = (
        lesion(1).convert("RGBA").convert(mode)
        if mode not in ("I;16", "F", "I")
        else Image.fromarray(
            np.full(
                (40, 40),
                65535 if mode == "I;16" else 200,
                dtype={"I;16": np.uint16, "F": np.float32, "I": np.int32}[mode],
            )
        )
    )
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    decoded = decode_rgb(buf.getvalue())
    assert decoded.mode == "RGB" and decoded.size == img.size
    if mode == "I;16":  # full-scale 16-bit white stays white, not wrapped or clipped to grey
        assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert decode_rgb(buf.getvalue()).getpixel((5, 5)) == (255, 255, 255)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError) as info:
        decode_rgb(png_header_only(30_000, 30_000), max_pixels=10_000)
    assert info.value.code == "too_many_pixels"


def test_unusable_sources_are_one_line_errors(tmp_path):
    write(tmp_path, "melanoma/readme.txt", b"no images here")
    with pytest.raises(IngestError, match="no usable images"):
        ingest(str(tmp_path), DataConfig())
    for i in range(3):
        write(tmp_path, f"melanoma/{i}.jpg", jpeg_bytes(lesion(i)))
    write(tmp_path, "nevus/0.jpg", jpeg_bytes(lesion(0, "nevus")))
    with pytest.raises(IngestError, match=r"nevus \(1\)"):
        ingest(str(tmp_path), DataConfig())


def test_ingest_with_no_usable_image_still_writes_its_report_and_says_where(tmp_path):
    """`lesionpipe ingest` on a folder of non-images: one error line naming the report,
    and the report holds every file's reason."""
    from click.testing import CliRunner

    from pipeline.cli import main

    source = tmp_path / "source"
    write(source, "melanoma/readme.txt", b"no images here")
    write(source, "melanoma/fake.jpg", b"not a jpeg at all")
    write(source, "nevus/tiny.png", jpeg_bytes(lesion(1))[:40])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["ingest", "--data", str(source), "--output-dir", str(out)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: no usable images in {source}: ") and line.endswith(
        f"; every file's reason: {out / 'report.html'}"
    ), line
    report = json.loads((out / "report.json").read_text())
    assert report["ingested"] == 0 and report["files_found"] == 3
    html = (out / "report.html").read_text()
    for name in ("readme.txt", "fake.jpg", "tiny.png"):
        assert name in html
    assert (out / "manifest.parquet").is_file()


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_decode_measures_and_hashes_like_the_full_decode(orientation):
    """Ingest decodes a JPEG once at reduced scale: the same full size (EXIF applied),
    format and errors as decode_rgb, a side no smaller than asked, and a pHash of the
    reduced image within a few bits of the full image's."""
    from components.data.imaging import decode_rgb_reduced, phash_hex

    img = lesion(3, size=400).resize((400, 300))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    data = buf.getvalue()
    full = decode_rgb(data)
    reduced, width, height, fmt = decode_rgb_reduced(data, 72)
    assert (width, height) == full.size == ((300, 400) if orientation == 6 else (400, 300))
    assert fmt == "JPEG" and min(reduced.size) >= 72 and max(reduced.size) < max(full.size)
    assert (reduced.width < reduced.height) == (full.width < full.height)
    distance = bin(int(phash_hex(reduced), 16) ^ int(phash_hex(full), 16)).count("1")
    assert distance <= 4
    with pytest.raises(ImageError) as truncated:
        decode_rgb_reduced(data[: len(data) // 2], 72)
    assert truncated.value.code == "corrupt"


def test_phash_is_imagehash_phash():
    import imagehash

    from components.data.imaging import phash_hex

    for index in range(20):
        img = lesion(index, size=90 + index)
        assert phash_hex(img) == str(imagehash.phash(img))


def test_thumbnails_and_phashes_made_together_are_each_images_own(tmp_path):
    """Ingest resizes the decoded images of one size together (one Pillow call a pass for
    a batch): the same bytes as imagehash.phash and Image.resize, one image at a time,
    whatever the sizes, the order of Pillow's passes for them, or the images' content."""
    import imagehash

    from components.data.imaging import STACK_MAX_PIXELS, phash_hex_batch, phash_pixels, phash_pixels_and_thumbs
    from components.data.ingest.validation import THUMB_SIDE, inspect_images

    rng = np.random.default_rng(3)
    sizes = [(100, 75)] * 4 + [(90, 90)] * 3 + [(3, 50)] * 2 + [(31, 33)] * 2 + [(33, 31)] * 2 + [(75, 100), (64, 64)]
    imgs = [lesion(k, size=max(s)).resize(s) for k, s in enumerate(sizes)]
    imgs += [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]  # noise
    pixels, thumbs = phash_pixels_and_thumbs(imgs, THUMB_SIDE)
    assert phash_hex_batch(pixels) == [str(imagehash.phash(img)) for img in imgs]
    for img, grey, thumb in zip(imgs, pixels, thumbs):
        assert np.array_equal(grey, phash_pixels(img))
        assert np.array_equal(thumb, np.asarray(img.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)))

    # In ingest, with a decode too large to be held for the batch (a PNG is decoded whole).
    big = int(STACK_MAX_PIXELS**0.5) + 1
    files = {
        "a.jpg": lesion(1, size=200),
        "big.png": lesion(2, size=big),
        "b.jpg": lesion(3, size=200),
        "c.png": lesion(4, size=90),
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    found = inspect_images([str(tmp_path / name) for name in files], 10**8, 10**8)
    for name, f in zip(files, found):
        decoded = decode_rgb_reduced((tmp_path / name).read_bytes(), 72)[0]
        assert f["phash"] == str(imagehash.phash(decoded)) and "image" not in f, name
        assert np.array_equal(f["thumb"], np.asarray(decoded.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)))


PEAK_RSS_OF_INGEST = """
import resource, sys
from components.core.settings import DataConfig
from components.data.ingest import ingest
cfg = DataConfig(ingest_workers=8, decode_memory_mb=int(sys.argv[3]), min_image_size=16)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ingest(sys.argv[1], cfg, sys.argv[2])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_decoding_threads_share_a_memory_budget(tmp_path):
    """A 16-bit greyscale PNG of 2000x2000 is a few KB on disk and over 100 MB while it is
    decoded (the 8-bit conversion works in float64). Eight threads decoding eight at once
    held them all (was: ~8 x 110 MB whatever the pod's memory); within
    data.decode_memory_mb=128 one decodes at a time."""
    import subprocess
    import sys

    for c, cls in enumerate(("melanoma", "nevus")):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for k in range(4):  # flat, each its own grey: small files, no duplicates
            grey = np.full((2000, 2000), 20_000 + 5_000 * k + 2_500 * c, dtype=np.uint16)
            Image.fromarray(grey).save(tmp_path / "data" / cls / f"{k}.png")
    assert (tmp_path / "data" / "nevus" / "0.png").stat().st_size < 50_000
    grown_mb = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_OF_INGEST, str(tmp_path / "data"), str(tmp_path / "out"), "128"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    assert int(grown_mb) < 300
