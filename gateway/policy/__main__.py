"""`python -m gateway.policy FILE...` checks policy files; `--schema` prints the JSON Schema."""

import sys

from gateway.policy._cli import main

if __name__ == "__main__":
    sys.exit(main())
