"""Paper §4.2, Tables 2-5 and 8: the refinement benchmark, methods against databases.

The methods compared (:mod:`~grefine.bench.methods`), a method over a database through the runner
(:mod:`~grefine.bench.benchmark`), summaries, tables and charts (:mod:`~grefine.bench.tables`) and
the speed benchmarks' full-size random models (:mod:`~grefine.bench.speed`)."""
