"""Hiding secrets when a policy is shown: passwords in URLs, secret-named option values."""

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
