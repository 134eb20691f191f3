"""The command line: check policy files, or print the JSON Schema of the format."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import PolicyError
from gateway.policy.document import policy_json_schema
from gateway.policy.load import load_policy
from gateway.settings import policy_environ


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.policy",
        description="Check routing policy files, or print the JSON Schema of the format.",
    )
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema and exit")
    parser.add_argument("files", nargs="*", help="policy files to check")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(policy_json_schema(), indent=2))
        return 0
    if not args.files:
        parser.error("give policy files to check, or --schema")
    status = 0
    for file in args.files:
        try:
            # `${VAR}` as the gateway itself reads it: the environment over `.env`.
            policy = load_policy(file, environ=policy_environ())
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        unavailable = [
            f"{name} ({spec.unavailable_reason})"
            for name, spec in policy.providers.items()
            if spec.unavailable_reason
        ]
        note = f"; unavailable: {', '.join(unavailable)}" if unavailable else ""
        counts = f"{_count(policy.providers, 'provider')}, {_count(policy.tasks, 'task')}"
        print(f"{file}: ok, {counts}{note}")
    return status


def _count(items: Mapping[str, Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"
