"""Free space as the operating system reports it, shrunk for chosen folders.

Filling a disk for real is not something a test can do on a shared machine,
so the OS's answer (``os.statvfs``, which ember does not own) is replaced
for the folders a test names; ember's own probe and every decision after it
run unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_BLOCK_BYTES = 4096


def shrink_free_space(monkeypatch: pytest.MonkeyPatch, free_bytes: dict[Path, int]) -> None:
    """Make ``os.statvfs`` report ``free_bytes[folder]`` available in each folder named."""
    real = os.statvfs
    wanted = {Path(folder).resolve(): size for folder, size in free_bytes.items()}

    def statvfs(path: os.PathLike | str | int) -> os.statvfs_result:
        stats = real(path)
        size = wanted.get(Path(path).resolve()) if not isinstance(path, int) else None
        if size is None:
            return stats
        blocks = size // _BLOCK_BYTES
        return os.statvfs_result((stats.f_bsize, _BLOCK_BYTES, stats.f_blocks, blocks, blocks, stats.f_files,
                                  stats.f_ffree, stats.f_favail, stats.f_flag, stats.f_namemax))

    monkeypatch.setattr(os, "statvfs", statvfs)
