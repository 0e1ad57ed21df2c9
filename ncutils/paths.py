"""Paths resolved from the repository root, never from the current directory.

papermill runs kernels in the caller's directory and nbval in the notebook's
folder; resolving every relative path here keeps outputs in one place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "load_checkpoint", "repo_root", "resolve_path", "tensor_digest", "write_json"]


def repo_root() -> Path:
    """The checkout holding ``pyproject.toml`` and ``notebooks/`` (editable install),
    else ``$NCUTILS_ROOT``, else the current directory."""
    env = os.environ.get("NCUTILS_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    return Path.cwd().resolve()


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if absolute, else relative to :func:`repo_root`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _finish_file(path: str | os.PathLike[str]) -> None:
    """Give a temporary file the permissions of a normal new file (``0666 & ~umask``: ``mkstemp`` makes it
    0600, unreadable to collaborators on a shared file system) and flush it to disk."""
    os.chmod(path, 0o666 & ~_umask())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file next to ``path`` to write into; moved onto ``path`` when the block succeeds, removed
    when it fails — readers never see a half-written file. Creates the parent folder. The file gets normal
    permissions (umask respected) and is fsynced before the rename, the folder after it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _finish_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | os.PathLike[str], fingerprint: str) -> dict[str, Any]:
    """A checkpoint written by ``torch.save`` of tensors and plain data, loaded with ``weights_only=True`` (no
    arbitrary pickle); a truncated or corrupt file, or one of another configuration, is a ``ValueError`` naming
    the file and what to do — never a silent restart from garbage."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, unsupported global: all unreadable for us
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {first[:200]}); delete it to "
                         "start the run afresh") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise ValueError(f"checkpoint {path} is not an ncutils checkpoint; delete it or pass another path")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"checkpoint {path} was written by a different configuration (parameters, data or "
                         "initialization); delete it or pass another checkpoint path")
    return state


def tensor_digest(*tensors: Any) -> str:
    """A SHA-256 of tensors' shapes, dtypes and bytes (a checkpoint's fingerprint of its data or initialization)."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        c = t.detach().cpu().contiguous()
        h.update(f"{tuple(c.shape)}{c.dtype}".encode())
        h.update(c.view(-1).view(__import__("torch").uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


def write_json(path: str | os.PathLike[str], obj: Any, default: Callable[[Any], Any] = str) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (:func:`atomic_path`); ``default`` converts
    values JSON does not know (numpy scalars, paths)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=default) + "\n")
    return Path(path)
