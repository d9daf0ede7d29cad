"""Atomic file writing shared by exports, videos, camera paths and checkpoints.

Everything recon writes for the user goes through :func:`atomic_write`: the writer fills a
temporary file in the destination folder and, only when it finished without raising, the file is
flushed to disk and renamed over the destination with :func:`os.replace` (atomic on POSIX and on
Windows when both paths are on the same volume, which a sibling temp file guarantees). A crash, an
exception or Ctrl-C half way therefore never leaves a truncated file under the final name, and an
existing file at that name stays intact until the new one is complete.

A write that fails for lack of space or permission (whatever the writer library raises: an
``OSError``, safetensors' or PyTorch's own error types) becomes a one-line
:class:`recon.errors.WriteError` naming the destination.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recon.errors import WriteError

__all__ = ["atomic_write", "atomic_write_bytes", "fsync_path"]


def fsync_path(path: str | Path) -> None:
    """Flush a file (or, on POSIX, a directory entry) to disk; silently a no-op where unsupported."""
    flags = os.O_RDONLY
    if hasattr(os, "O_DIRECTORY") and Path(path).is_dir():
        flags |= os.O_DIRECTORY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and directories on some OSes) refuse fsync
        pass
    finally:
        os.close(fd)


_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large for this file system", errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def _write_problem(exc: BaseException, folder: Path) -> str | None:
    """Why a write failed when the cause is the destination (full, read-only, forbidden), else None.

    Writer libraries wrap the OS error differently: ``OSError`` with an errno (numpy, trimesh,
    open), a message with "os error 28" (safetensors), or a bare "unexpected pos" (torch.save's
    zip writer). The last is recognised by the file system having no free block left.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _ENVIRONMENT_ERRNOS:
            return _ENVIRONMENT_ERRNOS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "No space left on device" in text or "os error 28" in text:
        return _ENVIRONMENT_ERRNOS[errno.ENOSPC]
    if isinstance(exc, Exception) and not isinstance(exc, (KeyboardInterrupt, TypeError, ValueError)):
        try:
            st = os.statvfs(folder)
        except (OSError, AttributeError):  # no statvfs on Windows
            return None
        if st.f_bavail == 0:
            return _ENVIRONMENT_ERRNOS[errno.ENOSPC]
    return None


def _temp_sibling(path: Path) -> Path:
    # Keep the real suffix last: writers such as trimesh or imageio choose the format from it.
    # The leading dot hides the file from casual listings while it is being written.
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")


@contextmanager
def atomic_write(path: str | Path, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The temp file is not created in advance (so writers that refuse existing files, or that set
    permissions from the umask, behave as usual); the block must create it. On success the temp
    file is fsync'ed, renamed over ``path`` and the folder entry is fsync'ed. On any exception
    (including KeyboardInterrupt) the temp file is removed and the exception propagates, so the
    destination is either the old file, absent, or the complete new file.

    Example::

        with atomic_write("out/mesh.ply") as tmp:
            mesh.export(tmp)
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_write: the writer did not create {tmp}")
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        problem = _write_problem(exc, path.parent) if isinstance(exc, Exception) else None
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if problem is not None:
            raise WriteError(f"cannot write this file: {problem} (nothing was written; a previous file of that name is unchanged)", path) from exc
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
