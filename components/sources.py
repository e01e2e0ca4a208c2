"""Where images come from: list a source's files and read any file by its URI.

Raw images are read from their source URIs by every step that needs pixels (ingest
to validate, normalize to write shards, predict/evaluate on external data); nothing
is copied between steps. ``read_bytes`` dispatches on the URI's scheme.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from components import synthetic
from components.errors import UserError


class SourceError(UserError):
    """The source cannot be read at all (missing, empty, unsupported): one line for the user."""


@dataclass(frozen=True)
class SourceFile:
    uri: str  # what read_bytes() takes
    relpath: str  # '/'-separated path below the source root, used to find labels
    size: int


class Source:
    """A listable collection of files. Subclasses implement list_files()."""

    root: str = ""
    synthetic: bool = False

    def list_files(self) -> list[SourceFile]:  # pragma: no cover - interface
        raise NotImplementedError

    def read_bytes(self, uri: str) -> bytes:
        return read_bytes(uri)


class LocalFolderSource(Source):
    def __init__(self, root: str | Path):
        path = Path(root).expanduser()
        if not path.exists():
            raise SourceError(f"data source not found: {root}")
        if not path.is_dir():
            raise SourceError(f"data source is not a folder: {root}")
        self.path = path.resolve()
        self.root = str(self.path)

    def list_files(self) -> list[SourceFile]:
        files = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath, name)
                if full.is_symlink() and not full.exists():
                    continue
                files.append(SourceFile(uri=str(full), relpath=full.relative_to(self.path).as_posix(), size=full.stat().st_size))
        return files


class SyntheticSource(Source):
    synthetic = True

    def __init__(self, images_per_class: int, size: int, seed: int):
        self.root = f"{synthetic.SCHEME}{seed}/{size}"
        self._uris = synthetic.uris(images_per_class, size, seed)

    def list_files(self) -> list[SourceFile]:
        # relpath <class>/<file> makes the synthetic set a class-subfolder layout.
        return [SourceFile(uri=u, relpath="/".join(u.split("/")[-2:]), size=0) for u in self._uris]


def open_source(uri: str, *, synthetic_images_per_class: int = 60, synthetic_size: int = 96, seed: int = 123) -> Source:
    """Open a data source named by the user. An empty URI is the synthetic dataset."""
    if not uri or uri.startswith(synthetic.SCHEME):
        return SyntheticSource(synthetic_images_per_class, synthetic_size, seed)
    if "://" in uri and not uri.startswith("file://"):
        raise SourceError(f"unsupported data source {uri!r}: use a folder path")
    return LocalFolderSource(uri.removeprefix("file://"))


def read_bytes(uri: str) -> bytes:
    if uri.startswith(synthetic.SCHEME):
        return synthetic.render_uri(uri)
    return Path(uri.removeprefix("file://")).read_bytes()
