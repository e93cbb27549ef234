"""Beyond the paper: the folder runner that applies G-Refine to many images (Fig. 2's pipeline, per image).

Work items from folders and prompt files (:mod:`~grefine.run.sources`), work items -> refined
images, maps and ``results.csv`` (:mod:`~grefine.run.runner`), one run per output folder
(:mod:`~grefine.run.lock`) and the built-in example set (:mod:`~grefine.run.demo`)."""
