"""The benchmark harness behind ``advcoreset bench SPEC`` (``configs/bench/*.yaml``, results under
``benchmarks/results/<name>/``):

- ``spec``: a benchmark spec read and checked before any run starts;
- ``runner``: the spec expanded into runs, each an ``advcoreset train`` child in its own folder, run and resumed;
- ``report``: per-run records, seed means, target checks, the Markdown table; ``plots``: its figures;
- ``probe``: the machine-speed probe; ``evals``: extra evaluations of finished runs.
"""

from advcoreset.bench.report import check_targets
from advcoreset.bench.runner import USAGE, Run, add_arguments, expand, main, run
from advcoreset.bench.spec import SpecError, load_spec

__all__ = ["USAGE", "Run", "SpecError", "add_arguments", "check_targets", "expand", "load_spec", "main", "run"]
