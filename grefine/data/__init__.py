"""Paper §4.1: the databases of the experiments (DiffusionDB, GenImage, AGIQA-1K/3K, AIGIQA-20K).

Loaders (:func:`~grefine.data.databases.load_database`), seeded splits
(:mod:`~grefine.data.splits`) and the rated databases' MOS records (:mod:`~grefine.data.mos`)."""
