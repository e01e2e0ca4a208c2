"""A local folder as a source: its files listed, links and special files refused where
reading them would be unsafe or meaningless."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from components.data.sources.base import Source, SourceError, SourceFile, raise_if_storage_failed


def _utf8_or_none(name: str) -> str | None:
    """``name`` if it is valid UTF-8 on disk; os.walk maps invalid bytes to surrogates."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return name


def _shown(name: str) -> str:
    """``name`` as UTF-8 text (Parquet, JSON and KFP need it), invalid bytes as \\x escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class LocalFolderSource(Source):
    def __init__(self, root: str | Path):
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)

    def list_files(self) -> list[SourceFile]:
        files = []
        prefix = os.path.join(self.root, "")
        for dirpath, dirnames, filenames in os.walk(self.path, onerror=self._raise):
            dirnames.sort()
            # os.walk lists a linked folder with the folders but does not enter it: list
            # the link itself, so that a class folder linked from elsewhere is reported.
            linked = [d for d in dirnames if Path(dirpath, d).is_symlink()]
            # Strings, not a path object per file (a tenth of ingest's listing time).
            folder = "" if dirpath == self.root else dirpath[len(prefix) :].replace(os.sep, "/") + "/"
            for name in sorted(filenames + linked):
                full = os.path.join(dirpath, name)
                relpath = folder + name
                if _utf8_or_none(relpath) is None:
                    shown = _shown(relpath)
                    files.append(
                        SourceFile(
                            uri=str(self.path / shown),
                            relpath=shown,
                            size=0,
                            refused_code="bad_name",
                            refused_reason="file name is not valid UTF-8 (shown with \\x escapes)",
                        )
                    )
                else:
                    files.append(self._file(full, relpath))
        return files

    def _file(self, path: str, relpath: str) -> SourceFile:
        """The listing of ``path``, refused when it must not be read. A link leaving the
        source is never followed: x.jpg -> /etc/shadow must not be read, and an image
        elsewhere is not this source's data. A link inside the source is followed (its
        target is listed too: an exact duplicate). A pipe or device would block the read."""

        def refused(code: str, reason: str) -> SourceFile:
            return SourceFile(uri=str(path), relpath=relpath, size=0, refused_code=code, refused_reason=reason)

        try:
            info = os.lstat(path)  # one call: for anything but a link, the same as stat()
        except OSError as exc:
            raise_if_storage_failed(exc, path)
            return refused("unreadable", f"unreadable: {exc.strerror}")
        if stat.S_ISLNK(info.st_mode):
            target = Path(os.path.realpath(path))
            link = _shown(os.readlink(path))
            if not target.is_relative_to(self.path):
                return refused("symlink_outside_source", f"symbolic link to {link}, outside the source: not read")
            if not target.exists():
                return refused(
                    "dangling_symlink", f"symbolic link to {link}, which leads nowhere (missing target or a loop)"
                )
            if target.is_dir():
                folder = target.relative_to(self.path).as_posix()
                return refused(
                    "symlinked_folder",
                    f"symbolic link to the folder {folder} in the source: not followed, its files are listed there",
                )
            try:
                info = os.stat(path)
            except OSError as exc:
                raise_if_storage_failed(exc, path)
                return refused("unreadable", f"unreadable: {exc.strerror}")
        if not stat.S_ISREG(info.st_mode):
            return refused("not_regular_file", "not a regular file (a pipe, socket or device): not read")
        return SourceFile(uri=str(path), relpath=relpath, size=info.st_size, version=str(info.st_mtime_ns))

    @staticmethod
    def _raise(exc: OSError) -> None:
        raise SourceError(f"cannot list {exc.filename}: {exc.strerror}")
