"""Reading a policy from text or a file: the four steps, in order.

Each step can only fail with a `PolicyError` that names the key path, the line, the bad
value and the fix:

1. YAML is composed into nodes, so every value keeps its line; duplicate keys are rejected
   (PyYAML would silently keep the last one) and booleans follow YAML 1.2 (`on:` is a key,
   not `True`; `2024-10-21` stays text).
2. `${VAR}` and `${VAR:-default}` are substituted in string values of the parsed tree. From
   here on, an error that would repeat a value taken from the environment shows its `${VAR}`.
3. The tree is validated against the file-form models (these also give the JSON Schema).
4. The file form is resolved: defaults merged key by key into each provider, `{task: other}`
   chain entries spliced in, and every name cross-checked.

Steps 3 and 4 gather every problem they find into one `PolicyError`: it leads with the most
useful one (a misspelt key before the required key it leaves missing, else the topmost),
whose path and line it carries, and lists the others after it. Each step raises before the
next runs, so a later step never reports what an earlier one caused.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.errors import PolicyError
from gateway.policy._env import Substituter
from gateway.policy._messages import YAML_TYPE_NAMES, describe, translate
from gateway.policy._resolve import Resolver
from gateway.policy._yaml import KeyPath, read_with_lines
from gateway.policy.document import PolicyDocument
from gateway.policy.models import Policy


def parse_policy(
    text: str | bytes,
    *,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    provider_types: Collection[str] | None = None,
    chat_only_types: Collection[str] = (),
) -> Policy:
    """Read a policy from YAML text; every problem is a `PolicyError` naming path and line.

    `provider_types` are the provider types that exist (`LLMFactory.registered_providers()`);
    with them, an unknown `type:` is refused here, naming the close ones. Without them the
    type is checked when a router builds the provider, which then is skipped as unavailable.
    `chat_only_types` (`LLMFactory.chat_only_providers()`) are the types that cannot embed:
    a provider of one in an embedding task's chain is refused.
    """
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyError(
                f"the file is not UTF-8 text (bad byte at offset {exc.start}): save it as UTF-8",
                source=source,
            ) from None
    tree, lines = read_with_lines(text, source)
    if not isinstance(tree, dict):
        found = "empty" if tree is None else YAML_TYPE_NAMES.get(type(tree), "a scalar")
        raise PolicyError(
            f"a policy is a mapping with version, providers and tasks keys; this document is "
            f"{found}",
            line=lines.get(()),
            source=source,
        )
    version = tree.get("version")
    if "version" in tree and not (type(version) is int and version == 1):
        raise PolicyError(
            f"version {describe(version, ('version',))} is not supported: this gateway reads "
            "version 1 files (write `version: 1`)",
            path="version",
            line=lines.get(("version",)),
            source=source,
        )
    substituter = Substituter(os.environ if environ is None else environ, lines, source)
    tree = substituter.walk(tree, ())
    try:
        policy = _build(tree, raw, lines, source, substituter, provider_types, chat_only_types)
    except PolicyError as exc:
        raise substituter.scrubbed(exc) from None
    policy.remember_revealed(substituter.revealed)
    return policy


def _build(
    tree: dict[str, Any],
    raw: bytes,
    lines: Mapping[KeyPath, int],
    source: str,
    substituter: Substituter,
    provider_types: Collection[str] | None,
    chat_only_types: Collection[str] = (),
) -> Policy:
    """The `Policy` from a substituted tree: validation, then resolution."""
    try:
        document = PolicyDocument.model_validate(tree)
    except ValidationError as exc:
        raise translate(exc, lines, source) from None
    resolver = Resolver(
        document,
        lines,
        source,
        substituter.unset_by_provider,
        provider_types,
        chat_only_types=chat_only_types,
    )
    providers = resolver.providers()
    return Policy(
        version=document.version,
        defaults=document.defaults,
        providers=providers,
        prices=dict(document.prices),
        tasks=resolver.tasks(providers),
        state=document.state,
        sha256=hashlib.sha256(raw).hexdigest(),
        source=source,
        loaded_at=time.time(),
    )


def load_policy(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    provider_types: Collection[str] | None = None,
    chat_only_types: Collection[str] = (),
) -> Policy:
    """Read a policy file (see `parse_policy`); a missing or unreadable file is a
    `PolicyError` too."""
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise PolicyError(
            f"cannot read the policy file ({exc.strerror or exc}): check the path",
            source=source,
        ) from None
    return parse_policy(
        data,
        source=source,
        environ=environ,
        provider_types=provider_types,
        chat_only_types=chat_only_types,
    )
