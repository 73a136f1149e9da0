"""The voice library: saved voices that persist across server restarts.

Metadata lives in an SQLite database ``voices.db`` in the library folder; each clone prompt (and each
locked design's prompt) is a safetensors file under ``prompts/`` written by ``ClonePrompt.save``. Files are
named by a random id, never by the voice name, so names need no escaping and case-insensitive file systems
cannot mix two voices up.

Writes are atomic: a prompt file is written to a temporary name and renamed, then the row is committed; if
the row cannot be committed the file is removed again, so a failed add leaves nothing behind. Opening the
library sweeps prompt files (and temporary files) that no row refers to. Names are case-insensitive
(``Alice`` and ``alice`` are the same voice) and must match ``NAME_PATTERN``. Loaded prompts are kept in
memory after their first ``resolve``. All methods are thread-safe (one lock, one connection per call).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError, QttsError
from ..voices import Clone, ClonePrompt, Design, Voice

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_DESCRIPTION_CHARS = 4000
DB_NAME = "voices.db"
PROMPTS_DIR = "prompts"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS voices (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    kind TEXT NOT NULL CHECK (kind IN ('clone', 'design')),
    description TEXT,
    prompt_file TEXT,
    ref_text TEXT,
    x_vector_only INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
)
"""


class VoiceNameError(InputError):
    """A voice name that is malformed (bad characters, empty, too long)."""


class VoiceExists(QttsError):
    """A voice of that name is already saved, or the name is a built-in speaker's."""


@dataclasses.dataclass(frozen=True)
class VoiceRecord:
    """One saved voice. ``kind``: ``clone`` or ``design``; ``locked``: a design with a fixed clone prompt;
    ``meta``: free-form JSON-able details given when the voice was saved (source file name, duration, ...)."""

    name: str
    kind: str
    created: float
    description: str | None = None
    ref_text: str | None = None
    x_vector_only: bool = False
    locked: bool = False
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view (what the HTTP API returns)."""
        return {"name": self.name, "kind": self.kind, "created": self.created, "description": self.description,
                "ref_text": self.ref_text, "x_vector_only": self.x_vector_only, "locked": self.locked,
                "meta": dict(self.meta)}


def validate_name(name: Any) -> str:
    """Return ``name`` if it is a valid voice name, else raise ``VoiceNameError`` saying what is allowed."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise VoiceNameError(f"invalid voice name {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . -")
    return name


def check_not_reserved(name: str, reserved: Iterable[str]) -> None:
    """Raise ``VoiceExists`` if ``name`` equals (case-insensitively) one of the built-in speaker names."""
    if name.lower() in {r.lower() for r in reserved}:
        raise VoiceExists(f"voice name {name!r} is a built-in speaker; choose another name")


class VoiceLibrary:
    """Saved clone and design voices in the folder ``root`` (created if missing).

    ``reserved``: built-in speaker names that saved voices may not take (compared case-insensitively).
    """

    def __init__(self, root: Path, *, reserved: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.reserved = tuple(reserved)
        self.prompts_dir = self.root / PROMPTS_DIR
        self.prompts_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / DB_NAME
        self._lock = threading.RLock()
        self._cache: dict[str, ClonePrompt] = {}  # lower-cased name -> loaded prompt
        with self._connect() as db:
            db.execute(_SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise QttsError(f"{self.db_path}: unknown voice library schema version {version}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._sweep()

    # ---- reading ------------------------------------------------------------------------------------

    def list(self) -> list[VoiceRecord]:
        """Every saved voice, ordered by name (case-insensitively)."""
        with self._lock, self._connect() as db:
            rows = db.execute("SELECT * FROM voices ORDER BY name COLLATE NOCASE").fetchall()
        return [_record(r) for r in rows]

    def get(self, name: str) -> VoiceRecord | None:
        """The saved voice called ``name`` (case-insensitive), or None."""
        row = self._row(name)
        return None if row is None else _record(row)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._row(name) is not None

    def resolve(self, name: str) -> Voice | None:
        """The saved voice as a ``qtts`` voice: ``Clone(prompt=...)`` for clones and locked designs,
        ``Design(description)`` for other designs; None if there is no such voice. Prompts are loaded once."""
        with self._lock:
            row = self._row(name)
            if row is None:
                return None
            if row["prompt_file"] is None:
                return Design(row["description"])
            key = row["name"].lower()
            prompt = self._cache.get(key)
            if prompt is None:
                try:
                    prompt = ClonePrompt.load(self.prompts_dir / row["prompt_file"])
                except InputError as e:
                    raise QttsError(f"saved voice {row['name']!r} is damaged: {e}") from None
                self._cache[key] = prompt
        return Clone(ref_text=prompt.ref_text, x_vector_only=prompt.x_vector_only, prompt=prompt)

    # ---- writing ------------------------------------------------------------------------------------

    def add_clone(self, name: str, prompt: ClonePrompt, **meta: Any) -> VoiceRecord:
        """Save a cloned voice from its computed prompt; ``meta``: JSON-able details kept with it."""
        if not isinstance(prompt, ClonePrompt):
            raise InputError(f"prompt must be a ClonePrompt, got {type(prompt).__name__}")
        return self._add(name, "clone", None, prompt, meta)

    def add_design(self, name: str, description: str, locked: ClonePrompt | None = None) -> VoiceRecord:
        """Save a designed voice. ``locked``: a clone prompt made from one rendering of it, used instead of
        the description so the voice sounds the same every time (resolves to a ``Clone``; needs Base)."""
        if not isinstance(description, str) or not description.strip():
            raise InputError("description must be a non-empty string")
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise InputError(f"description is too long: {len(description)} characters "
                             f"(limit {MAX_DESCRIPTION_CHARS})")
        if locked is not None and not isinstance(locked, ClonePrompt):
            raise InputError(f"locked must be a ClonePrompt, got {type(locked).__name__}")
        return self._add(name, "design", description.strip(), locked, {})

    def delete(self, name: str) -> bool:
        """Remove a saved voice and its prompt file; False if there was none."""
        with self._lock:
            row = self._row(name)
            if row is None:
                return False
            with self._connect() as db:
                db.execute("DELETE FROM voices WHERE name = ?", (row["name"],))
            self._cache.pop(row["name"].lower(), None)
            if row["prompt_file"] is not None:
                (self.prompts_dir / row["prompt_file"]).unlink(missing_ok=True)
        return True

    # ---- internals ----------------------------------------------------------------------------------

    def _add(self, name: str, kind: str, description: str | None, prompt: ClonePrompt | None,
             meta: dict[str, Any]) -> VoiceRecord:
        validate_name(name)
        check_not_reserved(name, self.reserved)
        try:
            meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InputError(f"voice metadata must be JSON-able ({e})") from None
        with self._lock:
            if self._row(name) is not None:
                raise VoiceExists(f"a voice named {name!r} already exists; delete it first or choose another name")
            file_name = None if prompt is None else f"{uuid.uuid4().hex}.safetensors"
            try:
                if prompt is not None:
                    prompt.save(self.prompts_dir / file_name)
                with self._connect() as db:
                    db.execute("INSERT INTO voices (name, kind, description, prompt_file, ref_text, x_vector_only, "
                               "meta, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (name, kind, description, file_name, prompt.ref_text if prompt else None,
                                int(prompt.x_vector_only) if prompt else 0, meta_json, time.time()))
            except BaseException as e:
                if file_name is not None:
                    (self.prompts_dir / file_name).unlink(missing_ok=True)
                if isinstance(e, sqlite3.IntegrityError):  # another process took the name meanwhile
                    raise VoiceExists(f"a voice named {name!r} already exists") from None
                raise
            if prompt is not None:
                self._cache[name.lower()] = prompt
            row = self._row(name)
        assert row is not None
        return _record(row)

    def _row(self, name: str) -> sqlite3.Row | None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            return None
        with self._lock, self._connect() as db:
            return db.execute("SELECT * FROM voices WHERE name = ?", (name,)).fetchone()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection in a transaction: committed on success, rolled back on error, always closed."""
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    def _sweep(self) -> None:
        """Delete prompt files no row refers to (left by a crash between the file rename and the commit)."""
        with self._lock, self._connect() as db:
            used = {r[0] for r in db.execute("SELECT prompt_file FROM voices WHERE prompt_file IS NOT NULL")}
        for path in self.prompts_dir.iterdir():
            if path.is_file() and path.name not in used:
                path.unlink(missing_ok=True)


def _record(row: sqlite3.Row) -> VoiceRecord:
    return VoiceRecord(name=row["name"], kind=row["kind"], created=row["created"], description=row["description"],
                       ref_text=row["ref_text"], x_vector_only=bool(row["x_vector_only"]),
                       locked=row["kind"] == "design" and row["prompt_file"] is not None,
                       meta=json.loads(row["meta"]))
