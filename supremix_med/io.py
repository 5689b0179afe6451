"""Atomic file writes, file digests and generator records, shared by the cache, the demo cohorts, the run reports and
the model sets.

Light on purpose (standard library only) so that preprocessing workers can import it without torch or MONAI.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["RUN_ID_KEY", "atomic_write", "atomic_write_json", "check_generator_record", "file_sha256"]

#: The entry naming the training run a file comes from, in every JSON file of a model set and in ``metrics.json``.
RUN_ID_KEY = "run_id"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "",
                 durable: bool = False) -> None:
    """Call ``write(tmp)`` on a hidden temporary file beside ``path``, then ``os.replace`` it onto ``path``.

    A failure half-way leaves any existing ``path`` untouched and removes the temporary file. ``suffix`` ends
    the temporary name, for writers that pick the format from it (nibabel's ``.nii.gz``, matplotlib's ``.png``).
    ``durable`` fsyncs the data before the rename, so a power cut cannot leave an empty file behind it.
    The file gets the permissions a plain ``open(path, "w")`` would (0666 less the umask), not the private
    0600 of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".partial{suffix}")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    try:
        write(Path(name))
        if durable:
            with open(name, "rb+") as handle_:
                os.fsync(handle_.fileno())
        os.replace(name, path)
    finally:
        if os.path.exists(name):
            os.remove(name)


def atomic_write_json(data: Any, path: str | os.PathLike, durable: bool = False) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically (see :func:`atomic_write`)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=float) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=durable)


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's content (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_generator_record(path: str | os.PathLike, parameters: dict[str, Any]) -> None:
    """Record a generator's ``parameters`` at ``path``, or refuse to mix with output made with other ones.

    Demo cohorts call this before writing into a folder: a first run writes the record; a later run with the
    same parameters continues (resume); one with different parameters raises.

    Raises:
        ValueError: ``path`` is not valid JSON, or records different parameters (the message shows both).
    """
    path = Path(path)
    record = json.loads(json.dumps(parameters, default=float))
    if not path.exists():
        atomic_write_json(record, path)
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); remove it or use another output folder.") from error
    if recorded != record:
        raise ValueError(f"{path} records output generated with {recorded}, but this call asks for {record}; "
                         "use another output folder or remove the old one.")
