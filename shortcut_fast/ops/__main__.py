"""``python -m shortcut_fast.ops --markdown``: print the op tables of ``docs/kernels.md`` from the op contract."""

from __future__ import annotations

import argparse

from .contract import markdown


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and print what was asked for."""
    parser = argparse.ArgumentParser(prog="python -m shortcut_fast.ops", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the op tables of docs/kernels.md")
    args = parser.parse_args(argv)
    if not args.markdown:
        parser.error("nothing to do: pass --markdown")
    print(markdown(), end="")


if __name__ == "__main__":
    main()
