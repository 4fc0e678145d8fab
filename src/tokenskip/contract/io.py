"""Run-folder I/O shared by every stage: atomic writes, JSONL with clear errors, resumable row files.

Every stage writes its rows through :class:`ResumableJsonl`, so a killed run resumes where it
stopped with no row lost or duplicated, and a rerun with *different* settings starts over instead of
silently reusing stale rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from tokenskip.contract.layout import state_file
from tokenskip.errors import TokenskipError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class DataError(TokenskipError, ValueError):
    """Bad input data. The message names the file, the 1-based line and the field at fault."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path + (f", line {line}" if line is not None else "")
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{problem}")


def current_umask() -> int:
    """The process umask. Read from ``/proc/self/status`` where there is one (Linux), so it is never changed,
    not even for a moment (the server writes from several threads); elsewhere by setting it and putting it back,
    as Python has no getter before 3.13."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_dir_beside(final: str | os.PathLike) -> Path:
    """An empty, hidden folder in ``final``'s parent (created if missing), to fill and then rename to ``final``
    (``os.replace``) so that ``final`` appears complete or not at all. Its mode is what a plain ``mkdir`` gives
    (0777 minus the umask), not ``mkdtemp``'s private 0700, so the published folder is shared like any other."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so a reader never sees a half-written file (temp file + rename). The file gets
    the mode a plain ``open(path, "w")`` would give (0666 minus the umask), not ``mkstemp``'s private 0600, so
    results stay readable to the rest of a shared machine or cluster as appended files are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())   # mkstemp makes 0600; a plain open() would give 0666 & ~umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def finite_or_none(x: Any) -> Any:
    """``x`` unchanged, except a NaN or ±infinity float, which becomes ``None`` (JSON ``null``).

    For statistics that are undefined (a mean over zero rows, a diverged loss): JSON has no NaN, and
    a file holding ``NaN`` is refused by strict readers, so writers here never emit it.
    """
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _nonfinite_path(obj: Any, where: str = "") -> str | None:
    """Where the first NaN/infinite float sits in ``obj`` (``"ratios.0.5.mean_abs_error"``), else ``None``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _nonfinite_path(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def dumps_strict(obj: Any, path: str | os.PathLike = "", **kwargs) -> str:
    """``json.dumps`` that refuses NaN/infinity (``allow_nan=False``) with an error naming the field.

    Raises:
        ValueError: ``obj`` holds a non-finite float (map it first, e.g. with :func:`finite_or_none`).
    """
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kwargs)
    except ValueError:
        field = _nonfinite_path(obj)
        if field is None:
            raise
        raise ValueError(f"{path or 'JSON output'}: field {field!r} is NaN or infinite; JSON has no such "
                         "value (a bug: map it to null where it is computed)") from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (see :func:`write_text_atomic`); NaN is refused
    (see :func:`dumps_strict`)."""
    write_text_atomic(path, dumps_strict(obj, path, indent=2, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write all ``rows`` as JSONL, atomically; NaN is refused (see :func:`dumps_strict`)."""
    write_text_atomic(path, "".join(dumps_strict(r, path) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file. Raises :class:`DataError` naming the file and line if it does not parse."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, data.count(b"\n", 0, e.start) + 1, None, _not_utf8(data, e)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"invalid JSON ({e.msg})") from None


def _not_utf8(data: bytes, e: UnicodeDecodeError) -> str:
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return (f"not UTF-8 text: byte 0x{data[e.start]:02x} at column {col} (Latin-1 or Windows-1252? "
            "re-save the file as UTF-8)")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for each non-blank line of a JSONL file (1-based line numbers).

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: a line is not UTF-8 text, not valid JSON or not a JSON object.
    """
    path = Path(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, lineno, None, _not_utf8(raw, e)) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, lineno, None, f"invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(path, lineno, None, f"expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All rows of a JSONL file (see :func:`iter_jsonl` for errors)."""
    return [row for _, row in iter_jsonl(path)]


def fingerprint(obj: Any) -> str:
    """Stable short hash (16 hex chars of SHA-256) of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (16 hex chars) of a file's bytes, or of every file under a directory (sorted by path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with p.open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]


class ResumableJsonl:
    """An append-only JSONL row file that survives kills and knows which settings made it.

    Beside ``path`` a ``<name>.state.json`` records the settings fingerprint. On open:

    * same fingerprint: existing rows are kept; a torn last line (a kill mid-write) is dropped and
      the file rewritten without it, so :attr:`done_keys` lists exactly the rows safely on disk;
    * different fingerprint (or no state file beside existing rows): the old file is moved aside to
      ``<name>.stale`` and a warning is logged, so a settings change never reuses stale rows.

    Rows are flushed and fsynced one by one by :meth:`append`. Duplicate keys are refused.

    Args:
        path: the ``.jsonl`` file.
        settings: JSON-serialisable settings that determine the rows' content.
        key: the field that identifies a row (default ``"id"``).
    """

    def __init__(self, path: str | os.PathLike, settings: Any, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.state_path = state_file(self.path)
        self.fingerprint = fingerprint(settings)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[Any, dict] = {}
        self._open(settings)

    def _open(self, settings: Any) -> None:
        state = read_json(self.state_path) if self.state_path.exists() else None
        if self.path.exists() and (state is None or state.get("fingerprint") != self.fingerprint):
            stale = self.path.with_suffix(".stale")
            os.replace(self.path, stale)
            logger.warning("%s: settings changed since these rows were written; moved them to %s and starting over",
                           self.path, stale.name)
        if self.path.exists():
            good, torn = [], False
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        if not line.endswith("\n"):
                            raise ValueError("torn line")
                    except ValueError:
                        torn = True
                        break
                    if row[self.key] not in self.rows:
                        self.rows[row[self.key]] = row
                        good.append(line)
            if torn or len(good) != sum(1 for _ in self.path.open(encoding="utf-8")):
                logger.warning("%s: dropped a partly written last row (interrupted run)", self.path)
                write_text_atomic(self.path, "".join(good))
        write_json_atomic(self.state_path, {"fingerprint": self.fingerprint, "settings": settings,
                                            "schema_version": SCHEMA_VERSION})
        self._fh = self.path.open("a", encoding="utf-8")

    @property
    def done_keys(self) -> set:
        """Keys of the rows already on disk."""
        return set(self.rows)

    def append(self, row: dict) -> None:
        """Write one row durably. Raises ``ValueError`` if its key is already present."""
        k = row[self.key]
        if k in self.rows:
            raise ValueError(f"{self.path}: duplicate {self.key}={k!r}")
        self._fh.write(dumps_strict(row, self.path) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows[k] = row

    def reorder(self, keys: Iterable) -> None:
        """Rewrite the file atomically with rows in ``keys`` order first (rows are appended in completion
        order, e.g. sorted by prompt length; readers expect the data set's order). Other rows follow."""
        keys = [k for k in keys if k in self.rows]
        rest = [k for k in self.rows if k not in set(keys)]
        order = keys + rest
        if order == list(self.rows):
            return
        self._fh.close()
        self.rows = {k: self.rows[k] for k in order}
        write_jsonl_atomic(self.path, self.rows.values())
        self._fh = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResumableJsonl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
