"""Evaluation (paper §4): image-quality metrics (:mod:`~grefine.eval.metrics`), the databases
(:mod:`~grefine.eval.databases`), the refinement benchmark's methods (:mod:`~grefine.eval.methods`)
and result tables (:mod:`~grefine.eval.tables`); per-image quality scorers
(:mod:`~grefine.eval.scorers`), their correlation with human MOS (:mod:`~grefine.eval.correlation`,
Tables 6-7) and their worth as an AutoQA gate (:mod:`~grefine.eval.autoqa`), run together by
:mod:`~grefine.eval.score_eval`; the speed benchmarks' full-size models (:mod:`~grefine.eval.speed`)."""
