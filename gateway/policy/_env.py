"""`${VAR}` and `${VAR:-default}` substituted in the string values of a policy tree."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway._secrets import SHORTEST_SCRUBBED, scrub_text
from gateway.errors import PolicyError
from gateway.policy._messages import describe
from gateway.policy._yaml import KeyPath, format_path, line_of

_REFERENCE = re.compile(
    r"\$\$\{"  # an escaped "${", kept as text
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|\$\{"  # anything else that starts like a reference is a typo
)


class _Unset:
    """Stands for a value whose `${VAR}` is not set; the key is dropped from the tree."""


_UNSET = _Unset()


class Substituter:
    def __init__(
        self, environ: Mapping[str, str], lines: Mapping[KeyPath, int], source: str
    ) -> None:
        self.environ = environ
        self.lines = lines
        self.source = source
        self.unset_by_provider: dict[str, list[str]] = {}
        # Each value taken from the environment, and the reference it replaced: errors about
        # the substituted tree show the reference instead (the value may be a key that ended
        # up in the wrong place).
        self._revealed: dict[str, str] = {}

    def walk(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            walked = {key: self.walk(item, (*path, key)) for key, item in value.items()}
            return {key: item for key, item in walked.items() if item is not _UNSET}
        if isinstance(value, list):
            walked_items = [self.walk(item, (*path, i)) for i, item in enumerate(value)]
            return [item for item in walked_items if item is not _UNSET]
        if isinstance(value, str) and "${" in value:
            return self._substitute(value, path)
        return value

    def _substitute(self, text: str, path: KeyPath) -> str | _Unset:
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group("name")
            if name is None:
                shown = describe(text, path)
                raise PolicyError(
                    f"malformed environment reference in {shown}: write ${{NAME}} or "
                    "${NAME:-default} (or $${ for a literal ${)",
                    path=format_path(path),
                    line=line_of(path, self.lines),
                    source=self.source,
                )
            value = self.environ.get(name, "")
            if value:
                self._revealed[value] = f"${{{name}}}"
                return value
            default = match.group("default")
            if default is not None:
                return default
            missing.append(name)
            return ""

        result = _REFERENCE.sub(replace, text)
        if not missing:
            return result
        if len(path) >= 3 and path[0] == "providers":
            # A provider whose key is not exported loads as unavailable: the other providers
            # still serve, and the reason names the variable to set.
            reasons = self.unset_by_provider.setdefault(str(path[1]), [])
            reasons.extend(name for name in missing if name not in reasons)
            return _UNSET
        raise PolicyError(
            f"environment variable {missing[0]} is not set: export {missing[0]}=... or write "
            f"${{{missing[0]}:-default}}",
            path=format_path(path),
            line=line_of(path, self.lines),
            source=self.source,
        )

    @property
    def revealed(self) -> dict[str, str]:
        """Each value taken from the environment, and the `${NAME}` it replaced."""
        return dict(self._revealed)

    def scrubbed(self, error: PolicyError) -> PolicyError:
        """`error` with every environment value it repeats shown as its `${NAME}`."""
        reason = scrub_text(error.reason, self._revealed, shortest=SHORTEST_SCRUBBED)
        if reason == error.reason:
            return error
        return PolicyError(reason, path=error.path, line=error.line, source=error.source)


def unavailable_reason(names: Sequence[str] | None) -> str | None:
    if not names:
        return None
    if len(names) == 1:
        return f"{names[0]} is not set"
    return f"{', '.join(names)} are not set"
