"""grefine: G-Refine, a general quality refiner for text-to-image generation.

Components (paper §3): :class:`PQMap` (Eq. 1-3), :func:`parse_prompt` and :class:`AQMap`
(Eq. 4-8; :func:`aq_map_from_aligner` takes any other aligner), :class:`InpaintStage1` and
:class:`~grefine.refine.pasd.PASDStage2` (Eq. 9-10), chained by :class:`GRefinePipeline`.

Subpackages follow the paper: :mod:`grefine.maps` (§3.1-3.2), :mod:`grefine.refine` (§3.3),
:mod:`grefine.data` (the databases, §4.1, :func:`load_database`), :mod:`grefine.bench` (the
refinement benchmark, §4.2), :mod:`grefine.eval` (§4.3: metrics, :func:`correlations` of scores
with MOS, :func:`autoqa_cost` of a quality gate), :mod:`grefine.train` (learning PQ-Map's
prompts) and :mod:`grefine.run` (the folder runner). :func:`report` writes ``report.html`` for
the output folder of a run or a benchmark; :mod:`grefine.app` is the interactive app.
"""
from grefine.bench.report import report
from grefine.config import GRefineConfig
from grefine.eval.autoqa import autoqa_cost
from grefine.eval.correlation import correlations
from grefine.data.databases import load_database
from grefine.maps.aq_map import (
    AQMap,
    AQMapResult,
    EmphasizedPrompt,
    aq_map_from_aligner,
)
from grefine.maps.clip_surgery import vvv_surgery
from grefine.maps.pq_map import PQMap, PQMapResult
from grefine.maps.syntax_tree import ParsedPrompt, Phrase, parse_prompt
from grefine.pipeline import GRefineOutput, GRefinePipeline
from grefine.refine.mask import MaskResult, binarize, stage1_strength
from grefine.refine.stage1 import InpaintStage1

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
    "aq_map_from_aligner",
    "autoqa_cost",
    "binarize",
    "correlations",
    "load_database",
    "parse_prompt",
    "report",
    "stage1_strength",
    "vvv_surgery",
]
