"""Creating output files with the mode a plain ``open()`` gives, without touching the process umask (no torch)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["create_temporary"]


def create_temporary(folder: str | os.PathLike[str], prefix: str) -> tuple[int, Path]:
    """Create a new, empty hidden file ``{prefix}{random}.tmp`` in ``folder`` exclusively, open for writing.

    Unlike ``tempfile.mkstemp`` (mode 0600) it gets the mode a plain ``open()`` gives, ``0o666`` less the umask,
    applied by the operating system: the process umask is never changed, not even for a moment.

    Returns:
        The open file descriptor and the path.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(8)}.tmp"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {str(folder)!r}")
