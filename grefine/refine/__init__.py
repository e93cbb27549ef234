"""G-Refine's quality refiner (paper §3.3): the stage-1 mask and strength (Eq. 9), stage 1
(SDXL inpainting) and stage 2 (:mod:`grefine.refine.pasd`), cascaded as Eq. 10."""
