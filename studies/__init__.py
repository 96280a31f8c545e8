"""pneumocnn's studies: the research behind the bundled model, apart from the benchmark suite.

They train candidate models, simulate acquisition shifts and other sites, and record the
decisions taken from them in ``studies/results/``; ``studies/README.md`` says what each one
is and how to re-make it. They reuse the suite's inputs and machine facts (:mod:`benchmarks`);
the suite never imports them.
"""

from benchmarks import REPO

RESULTS = REPO / "studies" / "results"
