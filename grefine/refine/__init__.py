"""Paper §3.3: the quality refiner, the stage-1 mask and strength and both diffusion stages.

The mask and strength (Eq. 9, :mod:`~grefine.refine.mask`), stage 1 (SDXL inpainting,
:mod:`~grefine.refine.stage1`) and stage 2 (PASD, :mod:`grefine.refine.pasd`), cascaded as Eq. 10;
the check of each refinement (not in the paper: :mod:`~grefine.refine.verify`); the config's
speed switches (:mod:`~grefine.refine.speedups`)."""
