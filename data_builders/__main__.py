"""``python -m data_builders build NAME --raw DIR``: rebuild a shipped data set from raw files."""
from __future__ import annotations

import argparse
import sys

from .sources import SOURCES, build_source, shipped_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_builders", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build shipped Parquet from the raw source files")
    build.add_argument("names", nargs="+", choices=sorted(SOURCES) + ["all"])
    build.add_argument("--raw", required=True, help="directory holding the raw sources, "
                                                    "e.g. ../shared/data")
    args = parser.parse_args(argv)
    names = sorted(SOURCES) if "all" in args.names else args.names
    for name in names:
        table = build_source(name, args.raw)
        path = table.save(shipped_path(name))
        print(f"{name}: {table} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
