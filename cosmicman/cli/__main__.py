"""``python -m cosmicman.cli`` (the ``cosmicman`` command): ``run`` turns the flywheel once; ``lineage`` says what
a dataset version or a model was built from; ``generate`` draws images from a trained model.

A user error (bad input, unknown environment, missing setting, unreachable store) is one line on stderr and
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from cosmicman.cli.errors import USER_ERROR_EXIT, UserError, is_setting_error, report_user_error
from cosmicman.cli.generate import add_generate_parser, run_generate
from cosmicman.cli.progress import TurnFailed
from cosmicman.cli.summary import print_summary
from cosmicman.cli.turn import WORKSPACE, run


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad command line answered in one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(argv)
    except UserError as exc:
        return report_user_error(exc)
    except ValueError as exc:
        if not is_setting_error(exc):
            raise
        return report_user_error(exc)


def _dispatch(argv: list[str] | None) -> int:
    from cosmicman.model.train.variants import VARIANTS

    parser = OneLineArgumentParser(prog="python -m cosmicman.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="materialize the whole flywheel on the local environment")
    run_p.add_argument("--home", default=os.environ.get("COSMICMAN_HOME", ".cosmicman"))
    run_p.add_argument("--json", help="also write the summary as JSON to this file")
    run_p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        metavar="VARIANT",
        help=f"training variants to train and evaluate (default: all): {', '.join(VARIANTS)}",
    )
    run_p.add_argument("--workspace", default=str(WORKSPACE), help="the workspace file the daemon loads")
    lin_p = sub.add_parser("lineage", help="what a dataset version or a trained model was built from (JSON)")
    lin_p.add_argument(
        "target",
        help="a dataset version (v0001), a model's folder name under models/daring_unet, or a model folder "
        "(URL, path, or store key)",
    )
    lin_p.add_argument("--store", default=None, help="object store URL (default: the environment's)")
    add_generate_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "lineage":
        from cosmicman.cli.lineage import lineage_of

        print(json.dumps(lineage_of(args.target, args.store), indent=2, default=str))
        return 0
    if args.command == "run":
        if not Path(args.workspace).is_file():
            raise UserError(f"no workspace file {args.workspace} (run from the repository root, or pass --workspace)")
        if Path(args.home).exists() and not Path(args.home).is_dir():
            raise UserError(f"--home {args.home} is a file, not a folder")
        try:
            summary = run(Path(args.home), variants=args.variants, workspace=Path(args.workspace))
        except TurnFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: the daemon and the runs it started are stopped", file=sys.stderr)
            return 130
        print_summary(summary)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
