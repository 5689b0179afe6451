"""Render the bundles' config files from the recipe: ``python -m supremix_med.recipes [--check] [NAME ...]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from supremix_med.recipes import BUNDLES_DIR, bundle_names, stale_files, write_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supremix_med.recipes", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"bundles to render (default: all of {bundle_names()})")
    parser.add_argument("--check", action="store_true", help="only list stale files; exit 1 if there are any")
    parser.add_argument("--bundles_dir", type=Path, default=BUNDLES_DIR, help="where the bundle folders are")
    args = parser.parse_args(argv)
    names = args.names or bundle_names()
    if args.check:
        stale = stale_files(args.bundles_dir, names)
        for path in stale:
            print(f"stale: {path} (re-render with python -m supremix_med.recipes)")
        return 1 if stale else 0
    for name in names:
        for path in write_bundle(name, args.bundles_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
