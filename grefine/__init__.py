"""grefine: G-Refine, a general quality refiner for text-to-image generation.

Components (paper §3): :class:`PQMap` (Eq. 1-3), :func:`parse_prompt` and :class:`AQMap`
(Eq. 4-8), :class:`InpaintStage1` and :class:`~grefine.pasd.PASDStage2` (Eq. 9-10), chained by
:class:`GRefinePipeline`.
"""
from grefine.aq_map import AQMap, AQMapResult, EmphasizedPrompt
from grefine.clip_surgery import vvv_surgery
from grefine.config import GRefineConfig
from grefine.pipeline import GRefineOutput, GRefinePipeline
from grefine.pq_map import PQMap, PQMapResult
from grefine.refiner import InpaintStage1, MaskResult, binarize, stage1_strength
from grefine.syntax_tree import ParsedPrompt, Phrase, parse_prompt

__version__ = "0.1.0"

__all__ = [
    "AQMap",
    "AQMapResult",
    "EmphasizedPrompt",
    "GRefineConfig",
    "GRefineOutput",
    "GRefinePipeline",
    "InpaintStage1",
    "MaskResult",
    "PQMap",
    "PQMapResult",
    "ParsedPrompt",
    "Phrase",
    "binarize",
    "parse_prompt",
    "stage1_strength",
    "vvv_surgery",
]
