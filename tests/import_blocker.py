"""Run Python code in a subprocess in which some top-level packages cannot be imported.

The packages stay installed; a finder placed first on `sys.meta_path` refuses them (and their
submodules) the way a missing package fails, with ModuleNotFoundError. This is how the tests
show what works without an optional dependency, without a second virtualenv and without
patching the code under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping

_PRELUDE = """\
import sys

BLOCKED = frozenset({blocked!r})
already = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED)
assert not already, f"imported before the blocker was installed: {{already}}"


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
"""


def run_without(
    blocked: Iterable[str],
    code: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter in which the `blocked` packages cannot be imported.

    `env` is added to this process's environment. The result's stdout and stderr are text.
    """
    source = _PRELUDE.format(blocked=sorted(set(blocked))) + "\n" + code
    return subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )
