"""Hiding secrets when a policy is shown: passwords in URLs, secret-named option values, and
any value taken from the environment (shown as its `${NAME}` reference)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, so it can be shown."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_SECRET_NAME = re.compile(r"(?:^|_)(?:key|secret|password|token|credentials?)$", re.IGNORECASE)


def is_secret_name(name: object) -> bool:
    return isinstance(name, str) and _SECRET_NAME.search(name) is not None


def mask_secret_keys(options: Mapping[str, Any]) -> dict[str, Any]:
    return {key: "***" if is_secret_name(key) else value for key, value in options.items()}


SHORTEST_SCRUBBED = 4
"""Environment values shorter than this are not scrubbed: they cannot hide much of a secret,
and replacing them would garble the text around them (a `1` inside a line number)."""


def scrub_text(text: str, revealed: Mapping[str, str]) -> str:
    """`text` with each value taken from the environment replaced by its `${NAME}`."""
    for value in sorted(revealed, key=len, reverse=True):
        if len(value) >= SHORTEST_SCRUBBED and value in text:
            text = text.replace(value, revealed[value])
    return text


def scrub(tree: Any, revealed: Mapping[str, str]) -> Any:
    """A JSON-like tree with `scrub_text` applied to every string in it, keys included."""
    if not revealed:
        return tree
    if isinstance(tree, str):
        return scrub_text(tree, revealed)
    if isinstance(tree, dict):
        return {scrub(key, revealed): scrub(value, revealed) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return [scrub(item, revealed) for item in tree]
    return tree
