"""The policy as this install reads it: `${VAR}` from the process environment over `.env`,
and the provider types the registry knows (those that cannot embed among them). The router,
`gateway check`, `gateway serve` and the console's editor all read a policy here, so each
refuses exactly what the others refuse."""

from __future__ import annotations

import os

from gateway.policy import Policy, load_policy, parse_policy
from gateway.providers import LLMFactory
from gateway.settings import policy_environ


def read_policy_file(path: str | os.PathLike[str]) -> Policy:
    """The policy in the file at `path`; a `PolicyError` names the key path and line."""
    return load_policy(
        path,
        environ=policy_environ(),
        provider_types=LLMFactory.registered_providers(),
        chat_only_types=LLMFactory.chat_only_providers(),
    )


def parse_policy_text(text: str | bytes, source: str) -> Policy:
    """A policy from its YAML text, checked as `read_policy_file` checks a file."""
    return parse_policy(
        text,
        source=source,
        environ=policy_environ(),
        provider_types=LLMFactory.registered_providers(),
        chat_only_types=LLMFactory.chat_only_providers(),
    )
