"""Helpers shared by the review tests."""
from __future__ import annotations

import os
from pathlib import Path


def tree(root: Path, lock: bool = False) -> dict[str, str | bytes | None]:
    """Every file (its bytes), folder (None) and symlink (where it points) under root.

    The data lock (.lock) only if `lock`: opening a data folder writes it and closing empties it, so it differs
    around any test that opens one.
    """
    return {p.relative_to(root).as_posix(): os.readlink(p) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*")) if lock or p.name != ".lock"}
