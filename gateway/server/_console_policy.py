"""The console's policy editor: check a draft as `gateway check` does, show what it would
change, and write it over the file without losing another operator's edit."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway._policy_files import parse_policy_text
from gateway.errors import PolicyError
from gateway.policy import Policy, ProviderSpec


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_draft(text: str, source: str) -> Policy:
    """The draft as the server would load it; a `PolicyError` (key path, line, every problem)
    exactly as `gateway check` reports it, since both go through the same loader."""
    return parse_policy_text(text.encode(), source)


def problem(exc: PolicyError) -> dict[str, Any]:
    return {"message": str(exc), "path": exc.path or None, "line": exc.line, "reason": exc.reason}


def _shown(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for each leaf that differs (nested mappings walked)."""
    found = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        name = f"{prefix}{key}"
        if isinstance(before, dict) and isinstance(after, dict):
            found += _changes(before, after, name + ".")
        else:
            found.append(f"{name}: {_shown(before)} -> {_shown(after)}")
    return found


def _key(spec: ProviderSpec) -> str | None:
    return spec.api_key.get_secret_value() if spec.api_key is not None else None


def _chain(task: dict[str, Any]) -> list[str]:
    return [entry["provider"] for entry in task.get("chain", [])]


def policy_diff(old: Policy, new: Policy) -> dict[str, Any]:
    """What applying `new` over `old` would change, and the tasks it affects. Secrets are
    compared and shown masked, as `GET /api/v1/policy` shows them."""
    before, after = old.masked(), new.masked()
    old_providers, new_providers = before["providers"], after["providers"]
    providers_changed: dict[str, list[str]] = {}
    for name in sorted(old_providers.keys() & new_providers.keys()):
        notes = _changes(old_providers[name], new_providers[name])
        if _key(old.providers[name]) != _key(new.providers[name]):
            notes.append("api_key: changed (values hidden)")  # masked alike, so found here
        notes = [n for n in notes if not n.startswith("api_key: ") or "hidden" in n]
        if notes:
            providers_changed[name] = notes
    old_tasks, new_tasks = before["tasks"], after["tasks"]
    tasks_changed: dict[str, list[str]] = {}
    for name in sorted(old_tasks.keys() & new_tasks.keys()):
        was, now = old_tasks[name], new_tasks[name]
        if was == now:
            continue
        notes = []
        if _chain(was) != _chain(now):
            verb = "reordered" if sorted(_chain(was)) == sorted(_chain(now)) else "changed"
            notes.append(f"chain {verb}: {', '.join(_chain(was))} -> {', '.join(_chain(now))}")
        notes += _changes(
            {k: v for k, v in was.items() if k != "chain"},
            {k: v for k, v in now.items() if k != "chain"},
        )
        if not notes:
            notes.append("chain entry parameters changed")
        tasks_changed[name] = notes
    touched = (old_providers.keys() ^ new_providers.keys()) | providers_changed.keys()
    affected = set(tasks_changed) | (old_tasks.keys() ^ new_tasks.keys())
    for tasks in (old_tasks, new_tasks):
        affected |= {name for name, task in tasks.items() if touched & set(_chain(task))}
    other = {
        section: _changes(before.get(section) or {}, after.get(section) or {})
        for section in ("defaults", "prices", "state")
        if before.get(section) != after.get(section)
    }
    return {
        "providers_added": sorted(new_providers.keys() - old_providers.keys()),
        "providers_removed": sorted(old_providers.keys() - new_providers.keys()),
        "providers_changed": providers_changed,
        "tasks_added": sorted(new_tasks.keys() - old_tasks.keys()),
        "tasks_removed": sorted(old_tasks.keys() - new_tasks.keys()),
        "tasks_changed": tasks_changed,
        "other_changed": other,
        "affected_tasks": sorted(affected),
        "unchanged": before == after and not other,
    }


class Conflict(Exception):
    """The file changed on disk since the editor loaded it."""

    def __init__(self, loaded_sha256: str, current_sha256: str) -> None:
        super().__init__(f"the file changed on disk (sha256 {current_sha256[:12]})")
        self.loaded_sha256 = loaded_sha256
        self.current_sha256 = current_sha256


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file as it is now, across processes (another worker applying
    at the same moment waits, then finds the content changed)."""
    with open(path, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held.fileno(), fcntl.LOCK_UN)


def replace_file(path: Path, text: str, loaded_sha256: str) -> str:
    """Write `text` over `path` if it still holds what the editor loaded: a temporary file in
    the same directory, then a rename, so a reader sees the old file or the new one, never a
    part. Returns the old sha256; `Conflict` if the file changed since it was loaded."""
    with _locked(path):
        current = sha256_of(path.read_bytes())
        if current != loaded_sha256:
            raise Conflict(loaded_sha256, current)
        mode = path.stat().st_mode & 0o777
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(text.encode())
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, mode)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    return current
