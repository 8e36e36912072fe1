"""The summary ``make mutants`` prints after ``mutmut run``: killed, survived, and the reviewed equivalents.

    python -m tests.support.mutants_report [--equivalents tests/mutants_equivalent.toml] [--min-killed 0.9]

It reads mutmut's results (``mutants/<module>.py.meta``) for the modules ``[tool.mutmut] only_mutate``
names. A mutant counts as killed when a fast test failed or timed out under it. The score is killed over
all mutants, equivalents included: a reviewed equivalent is still a survivor, only an explained one.

A survivor is reviewed when tests/mutants_equivalent.toml names it and the mutated line it records is the
line mutmut shows today, so a review cannot silently carry over to a different mutant once the code moves.
Exit status 1 when the score is under ``--min-killed`` or a survivor is unreviewed; the summary says which.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# mutmut's exit-code classes (mutmut.stats.status_by_exit_code) folded into what the summary reports
KILLED_STATUSES = {"killed", "timeout"}
REPO_ROOT = Path(__file__).resolve().parents[2]
MUTANTS = REPO_ROOT / "mutants"


@dataclass(frozen=True)
class Equivalent:
    mutant: str
    mutated_line: str
    reason: str


def statuses() -> dict[str, str]:
    """mutant name -> mutmut's status, for every mutant of the modules under mutation."""
    from mutmut.stats import status_by_exit_code

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    found: dict[str, str] = {}
    for module in config["only_mutate"]:
        meta = MUTANTS / f"{module}.meta"
        if not meta.exists():
            raise SystemExit(f"no mutmut results for {module} ({meta} is missing): run `make mutants`")
        exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
        found.update({name: status_by_exit_code[code] for name, code in exit_codes.items()})
    return found


def mutated_line(mutant: str) -> str:
    """The first added line of ``mutmut show``'s diff: what the mutant changed the code to."""
    diff = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", mutant], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else ""


def load_equivalents(path: Path) -> dict[str, Equivalent]:
    entries = tomllib.loads(path.read_text()).get("equivalent", [])
    return {e["mutant"]: Equivalent(e["mutant"], e["mutated_line"], e["reason"]) for e in entries}


def module_of(mutant: str) -> str:
    return mutant.split(".x\u01c1")[0].rsplit(".x_", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--equivalents", type=Path, default=REPO_ROOT / "tests" / "mutants_equivalent.toml")
    parser.add_argument("--min-killed", type=float, default=0.9)
    args = parser.parse_args()

    found = statuses()
    equivalents = load_equivalents(args.equivalents)
    survivors = sorted(name for name, status in found.items() if status not in KILLED_STATUSES)
    lines = {name: mutated_line(name) for name in survivors}
    reviewed = [n for n in survivors if n in equivalents and equivalents[n].mutated_line == lines[n]]
    unreviewed = [n for n in survivors if n not in reviewed]
    killed = len(found) - len(survivors)

    per_module: dict[str, Counter[str]] = {}
    for name, status in found.items():
        per_module.setdefault(module_of(name), Counter())["killed" if status in KILLED_STATUSES else status] += 1
    print(f"{'module':<40} {'mutants':>8} {'killed':>7}  survivors by status")
    for module, counts in sorted(per_module.items()):
        total = sum(counts.values())
        rest = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "killed") or "-"
        print(f"{module:<40} {total:>8} {counts['killed']:>7}  {rest}")
    print(f"\nreviewed equivalents ({len(reviewed)}):")
    for name in reviewed:
        print(f"  {name}: {equivalents[name].reason}")
    print(f"\nunreviewed survivors ({len(unreviewed)}): add a test that kills it, or review it as equivalent")
    for name in unreviewed:
        stale = " (the review names another line: the code moved)" if name in equivalents else ""
        print(f"  {name} [{found[name]}]{stale}: {lines[name]}")
    stale_reviews = sorted(set(equivalents) - set(survivors))
    if stale_reviews:
        print(f"\nreviews of mutants that no longer survive or exist ({len(stale_reviews)}): drop them")
        for name in stale_reviews:
            print(f"  {name}")
    score = killed / len(found) if found else 0.0
    print(f"\nmutants: {len(found)}  killed: {killed}  survived: {len(survivors)} ({len(reviewed)} reviewed)")
    print(f"mutation_score: {score:.3f} (goal at least {args.min_killed:.2f})")
    return 0 if score >= args.min_killed and not unreviewed else 1


if __name__ == "__main__":
    raise SystemExit(main())
