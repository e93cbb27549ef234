"""Paper §4.3, Tables 6-7: quality scores against human MOS, and the AutoQA cost of a gate.

The image-quality metric registry (:mod:`~grefine.eval.metrics`), named per-image scorers
(:mod:`~grefine.eval.scorers`), their correlation with MOS (:mod:`~grefine.eval.correlation`), their
worth as an AutoQA gate (:mod:`~grefine.eval.autoqa`), plots (:mod:`~grefine.eval.plots`) and the
whole evaluation (:mod:`~grefine.eval.score_eval`)."""
