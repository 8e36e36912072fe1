"""``python -m cosmicman.cli``: ``run`` turns the flywheel once; ``lineage`` says what a dataset version or a
model was built from."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cosmicman.cli.summary import object_store_of, print_summary
from cosmicman.cli.turn import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmicman.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="materialize the whole flywheel on the local environment")
    run_p.add_argument("--home", default=os.environ.get("COSMICMAN_HOME", ".cosmicman"))
    run_p.add_argument("--json", help="also write the summary as JSON to this file")
    run_p.add_argument("--variants", nargs="+", help="training variants to train and evaluate (default: all)")
    lin_p = sub.add_parser("lineage", help="what a dataset version or a trained model was built from (JSON)")
    lin_p.add_argument("target", help="a dataset version (v0001), or a model folder: URL, path, or key in the store")
    lin_p.add_argument("--store", default=None, help="object store URL (default: the environment's)")
    args = parser.parse_args(argv)
    if args.command == "lineage":
        from cosmicman.datasets.lineage import lineage

        store = args.store
        options: dict = {}
        if store is None:
            from cosmicman.definitions import defs

            object_store = object_store_of(defs)
            store, options = object_store.url, object_store.storage_options
        print(json.dumps(lineage(store, args.target, options), indent=2, default=str))
        return 0
    if args.command == "run":
        summary = run(Path(args.home), variants=args.variants)
        print_summary(summary)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
