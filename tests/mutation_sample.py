"""Print a seeded random sample of mutmut's mutant names, for a mutation run that fits a time budget.

A whole `mutmut run` is several hours on 2 cores. A random sample of a module's mutants estimates its score
without bias, and the seed makes the sample the next person draws the same one (docs/mutation.md):

    mutmut run "nothing"                       # once: mutmut writes every mutant under mutants/ first
    mutmut run $(python -m tests.mutation_sample serving/imaging.py --share 0.25 --seed 1)

Names whose function matches --skip (a glob, repeatable) are left out, e.g. functions an earlier run covered.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import random
from pathlib import Path


def mutant_names(module: str, mutants: Path = Path("mutants")) -> list[str]:
    """Every mutant mutmut generated for module (a path such as serving/imaging.py), in its own order."""
    meta = mutants / f"{module}.meta"
    if not meta.exists():
        raise SystemExit(f"{meta} is missing: run `mutmut run \"nothing\"` once so that mutmut writes the mutants")
    return list(json.loads(meta.read_text())["exit_code_by_key"])


def sample(names: list[str], share: float, seed: int, skip: list[str]) -> list[str]:
    kept = [n for n in names if not any(fnmatch.fnmatch(n.split("__mutmut_")[0], pattern) for pattern in skip)]
    return sorted(random.Random(seed).sample(kept, round(len(kept) * share)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+", help="source files, as in setup.cfg's only_mutate")
    parser.add_argument("--share", type=float, default=0.25, help="share of each module's mutants (default 0.25)")
    parser.add_argument("--seed", type=int, default=1, help="the sample's seed (default 1)")
    parser.add_argument("--skip", action="append", default=[], metavar="GLOB",
                        help="leave out functions whose mutmut name matches, e.g. 'serving.imaging.x_identify'")
    args = parser.parse_args(argv)
    for module in args.modules:
        print("\n".join(sample(mutant_names(module), args.share, args.seed, args.skip)))


if __name__ == "__main__":
    main()
