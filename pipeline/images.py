"""Images by digest: `make push` records each pushed image's digest in
build/image-digests.json ({"repo:tag": "repo@sha256:..."}); compile, submit and schedule
use the digest of each image that has one, so a re-pushed tag never changes what a
submitted run or a schedule runs, and say which images run by a tag that can move."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from components.core.errors import UserError

# Relative to the working folder (the repository root, where make writes it); git-ignored.
DIGESTS_FILE = Path("build") / "image-digests.json"
DIGESTS_ENV = "LESION_IMAGE_DIGESTS"  # another file's path


def digests_file() -> Path:
    return Path(os.environ.get(DIGESTS_ENV) or DIGESTS_FILE)


def recorded_digests(path: Path | None = None) -> dict[str, str]:
    """{"repo:tag": "repo@sha256:..."} as recorded ({} when nothing is)."""
    path = path or digests_file()
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON ({exc}): delete it and run `make push` again") from None
    return found if isinstance(found, dict) else {}


def record_digest(image: str, repo_digest: str, path: Path | None = None) -> None:
    """Record that ``image`` (repo:tag) was pushed as ``repo_digest`` (repo@sha256:...)."""
    repo, _, digest = repo_digest.strip().partition("@")
    if not digest.startswith("sha256:") or len(digest) != len("sha256:") + 64:
        raise UserError(f"{repo_digest!r} is not a repo@sha256:<64 hex digits> reference for {image}")
    # The registry's own name for the repository may differ (docker.io/library/...); keep ours.
    pinned = f"{image.rsplit(':', 1)[0] if ':' in image.rsplit('/', 1)[-1] else image}@{digest}"
    path = path or digests_file()
    found = recorded_digests(path)
    found[image] = pinned
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")


def pin(image: str, digests: dict[str, str]) -> str:
    """``image`` by its recorded digest; as given when it has a digest already or none is recorded."""
    return image if "@sha256:" in image else digests.get(image, image)


def pinned_images(images, warn=None):
    """The config's images section with every recorded digest applied; one line on stderr
    (or to ``warn``) naming the images that stay on a tag."""
    digests = recorded_digests()
    pinned = images.model_copy(update={"cpu": pin(images.cpu, digests), "gpu": pin(images.gpu, digests)})
    floating = sorted({image for image in (pinned.cpu, pinned.gpu) if "@sha256:" not in image})
    if floating:
        (warn or _to_stderr)(
            f"note: steps run by tag, not digest (no digest recorded in {digests_file()}; `make push` records it): "
            + ", ".join(floating)
        )
    return pinned


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def main(argv: list[str]) -> int:
    """``python -m pipeline.images record IMAGE REPO@DIGEST`` (the Makefile's push target)."""
    if len(argv) != 3 or argv[0] != "record":
        sys.stderr.write("usage: python -m pipeline.images record IMAGE REPO@sha256:DIGEST\n")
        return 2
    try:
        record_digest(argv[1], argv[2])
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(f"{argv[1]} -> {recorded_digests()[argv[1]]} ({digests_file()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
