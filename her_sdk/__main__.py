"""`her` and `python -m her_sdk`: the command line, or one line naming the extra it needs.

The `her` script is installed with every install of her-sdk, but its commands live in
`her_sdk.cli`, which needs the `cli` extra (typer, rich). Without it, `her` says so in one line
and exits 1 instead of dying with a traceback.
"""

from __future__ import annotations

import sys

from ._errors import MissingDependencyError


def main() -> None:
    try:
        from .cli import main as cli_main
    except MissingDependencyError as exc:
        print(f"her: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    cli_main()


if __name__ == "__main__":
    main()
