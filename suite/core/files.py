"""Atomic file writes (temp file + rename + fsync), content hashes, and the writable-folder check."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from suite.core.errors import UserError


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under this process's umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over the target.

    The temporary file gets the mode the umask gives ordinary files (mkstemp's are private), and
    the folder is synced after the rename, so a crash leaves the old file or the new one, whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except OSError as error:  # a failed write() or fsync() names no file: name the one being written
        Path(temporary).unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_table(frame: pd.DataFrame, stem: Path, csv: bool = True) -> None:
    """``stem.parquet`` (and ``stem.csv``), each written atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(stem.with_suffix(".parquet"), buffer.getvalue())
    if csv:
        atomic_write_text(stem.with_suffix(".csv"), frame.to_csv(index=False))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_writable(folder: Path) -> None:
    """Fail with one line, before anything is written, if ``folder`` cannot be created or written.

    Permission bits are not enough (root may write anywhere, /proc and /sys refuse new files), so a
    temporary file is created and removed in the nearest existing folder.
    """
    try:
        str(folder.absolute()).encode("utf-8")
    except UnicodeEncodeError:  # bytes the locale could not decode (LANG=C with a non-ASCII name)
        raise UserError(
            f"output folder {str(folder).encode('utf-8', 'backslashreplace').decode()} is not text in this locale "
            f"({sys.getfilesystemencoding()}); set LANG=C.UTF-8 (or PYTHONUTF8=1) or use an ASCII name"
        ) from None
    probe = folder
    try:
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
    except OSError as error:  # e.g. a name longer than the file system allows
        raise UserError(f"output folder {str(folder)[:80]}... is not usable: {error.strerror or error}") from None
    if not probe.is_dir():
        raise UserError(f"output folder {folder} is not writable: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise UserError(f"output folder {folder} is not writable: {error.strerror or error} in {probe}") from None
