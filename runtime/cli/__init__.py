"""The command line (``vfpga``: compile, run, info, cache, demo, bench) and
the demo it runs.

Imports anything below it: tenants, experiments, the compiler.
"""

from .main import main

__all__ = ["main"]
