"""Timings that choose kernels, measured once per machine and kept on disk.

Which int8 GEMM is faster here, and whether a variant's linears beat fp32 here, depend only
on the CPU, the torch build and the shapes timed; measuring them cost every start about a
second and a half (bench/startup.py). They are kept in one JSON file under the cache folder,
named by a fingerprint of what they depend on (the CPU's model and flags, torch's and llmq's
kernel versions): another CPU or torch reads another file, so a stale timing is never used.
A file that cannot be read (truncated, not JSON) is measured again and rewritten, with one
warning; a folder that cannot be written is bypassed, with one warning, and the timing is
kept for the life of the process only. Delete the file to time again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
# what a command line shows while a first start on a machine prepares what later starts
# reuse (the CLI prints this logger's lines to stderr)
progress = logging.getLogger("llmq.progress")

# bump when what a key measures changes meaning
FORMAT = 1

_lock = threading.Lock()
_folder: Path | None = None
_values: dict[str, Any] | None = None
_warned: set[str] = set()


def configure(cache_dir: str | Path | None) -> None:
    """Where the timings are kept (None: in this process only)."""
    global _folder, _values
    with _lock:
        _folder = Path(cache_dir) / "measured" if cache_dir else None
        _values = None


def fingerprint() -> str:
    """What every timing here depends on besides its own key."""
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    text = json.dumps([FORMAT, model, flags, torch.__version__, os.cpu_count()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path() -> Path | None:
    """The file this machine's timings live in (None: not kept on disk)."""
    return None if _folder is None else _folder / f"kernels-{fingerprint()}.json"


def remembered(key: str, measure: Callable[[], Any]) -> Any:
    """The value kept under ``key`` for this machine, else ``measure()`` (JSON-serializable),
    kept from now on."""
    with _lock:
        values = _load()
        if key in values:
            return values[key]
    if _folder is not None:
        first_start_on_this_machine(_folder.parent)
    value = measure()  # outside the lock: a measurement may itself ask for another
    with _lock:
        values = _load()
        values[key] = value
        _store(values)
    return json.loads(json.dumps(value))  # the same shape a later process reads back


def first_start_on_this_machine(cache_dir: Path) -> None:
    """One progress line per process, the first time it builds or times what it keeps."""
    if "progress" not in _warned:
        _warned.add("progress")
        progress.info("first start on this machine (or after an upgrade): building and "
                      "timing kernels for this CPU, kept in %s for later starts", cache_dir)


def _load() -> dict[str, Any]:
    global _values
    if _values is not None:
        return _values
    _values = {}
    file = path()
    if file is None or not file.exists():
        return _values
    try:
        stored = json.loads(file.read_text())
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
        _values = stored
    except (OSError, ValueError) as exc:
        _warn_once("read", f"kernel timings in {file} unreadable ({exc}): measuring again")
    return _values


def _store(values: dict[str, Any]) -> None:
    file = path()
    if file is None:
        return
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=file.parent, prefix=file.name,
                                         suffix=".part", delete=False) as part:
            json.dump(values, part, indent=1, sort_keys=True)
        os.replace(part.name, file)  # atomic: a reader never sees half a file
    except OSError as exc:
        if "part" in locals():
            Path(part.name).unlink(missing_ok=True)
        _warn_once("write", f"kernel timings not kept in {file.parent} ({exc}): they are "
                   "measured again at every start")


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(message)
