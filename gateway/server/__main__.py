"""`python -m gateway.server --policy routing.yaml --port 8000`: `gateway serve` without the
command line's extras (`--simulate` is the command line's: `gateway serve --simulate`)."""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.server", description="Serve the LLM gateway over HTTP."
    )
    parser.add_argument("--policy", default="routing.yaml", help="policy file (routing.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from gateway.server import serve

    args = parse_args(argv)
    return serve(args.policy, args.host, args.port, args.workers)


if __name__ == "__main__":
    sys.exit(main())
