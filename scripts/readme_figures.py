"""Renders the README's experiment figures from a report.json of `vfpga bench`.

    python scripts/readme_figures.py                      # from scripts/results/report.json
    python scripts/readme_figures.py DIR/report.json      # another run's report (copy it to results/ to keep it)
    python scripts/readme_figures.py --check              # exit 1 when the README differs from the report
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "README.md")
REPORT = os.path.join(HERE, "results", "report.json")


def main(argv=None) -> int:
    from vfpga.runtime.experiments import tables

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", nargs="?", default=REPORT)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is stale")
    a = p.parse_args(argv)
    with open(a.report) as f:
        block = tables.readme_block(json.load(f))
    with open(README) as f:
        readme = f.read()
    updated = tables.replace_readme_block(readme, block)
    if a.check:
        if updated != readme:
            print("README.md's figures differ from", a.report, file=sys.stderr)
            return 1
        return 0
    with open(README, "w") as f:
        f.write(updated)
    print("README.md figures rendered from", a.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
