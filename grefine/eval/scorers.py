"""A registry of named per-image quality scorers for the score evaluation (paper §4.4, Tables
6-7), in pyiqa's style: :func:`list_scorers`, :func:`scorer_spec`, :func:`create_scorers`.

Names:

* G-Refine's own: ``pq`` (PQ-Map score p, Eq. 3; perceptual), ``aq`` (AQ-Map score a, Eq. 8;
  alignment), ``pq_aq`` (p · a, the combined gate; compared with both MOS) and ``clip_surgery``
  (σ(10·s_CLS) of the whole prompt on CLIP-Surgery's image tower — the first factor of Eq. 8,
  i.e. AQ-Map without its phrase-level cask; Table 7's CLIP-Surgery row);
* every no-reference metric of :mod:`grefine.eval.metrics` by its name: the perceptual ones
  (``dbcnn, clipiqa, cnniqa, hyperiqa, nima, paq2piq``, …, also weight-free ones such as ``piqe``)
  and the alignment ones (``clipscore, imagereward, hps, hpsv2, pickscore``). Full-reference
  metrics (PSNR, SSIM, …) need a reference image and are not per-image quality scores.

Each name has a :class:`ScorerSpec` saying which MOS it is compared with (its ``kind``).
:func:`create_scorers` returns callables ``scorer(image, prompt) -> {name: value}``; the map
scorers share one PQ-Map/AQ-Map pair (built by :func:`grefine.pipeline.build_maps`, which loads
one CLIP for both when their weights are the same) and compute only the maps their names need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Optional, Protocol, Sequence, Union

import torch
from PIL import Image

from grefine.config import GRefineConfig
from grefine.eval.metrics import (
    Metric,
    MetricUnavailable,
    create_metric,
    describe_metric,
    list_metrics,
)
from grefine.image_io import as_rgb_image
from grefine.maps.aq_map import AQMap
from grefine.maps.clip_surgery import TowerPasses
from grefine.maps.pq_map import PQMap
from grefine.pipeline import build_maps, resolve_device, resolve_dtype
from grefine.weights import hub_reachable

ScorerKind = Literal["perceptual", "alignment", "combined"]


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer's name and what it measures: ``perceptual`` scores are compared with the
    perceptual MOS, ``alignment`` ones with the alignment MOS, ``combined`` ones with both.
    ``lower_better``: lower values mean better quality (e.g. PIQE, BRISQUE)."""

    name: str
    kind: ScorerKind
    lower_better: bool = False
    description: str = ""

    @property
    def needs_prompt(self) -> bool:
        return self.kind != "perceptual"


MAP_SCORERS: dict[str, ScorerSpec] = {
    spec.name: spec
    for spec in (
        ScorerSpec("pq", "perceptual", description="PQ-Map score p (Eq. 3)"),
        ScorerSpec("aq", "alignment", description="AQ-Map score a (Eq. 8)"),
        ScorerSpec("pq_aq", "combined", description="p · a, the combined quality gate"),
        ScorerSpec("clip_surgery", "alignment", description="CLIP-Surgery whole-prompt score (Eq. 8's first factor)"),
    )
}
TABLE6_SCORERS = ("dbcnn", "clipiqa", "cnniqa", "hyperiqa", "nima", "paq2piq", "pq")
"""The rows of the paper's Table 6 (perceptual quality)."""
TABLE7_SCORERS = ("clipscore", "imagereward", "hps", "hpsv2", "pickscore", "clip_surgery", "aq")
"""The rows of the paper's Table 7 (alignment quality)."""
PAPER_SCORERS = tuple(dict.fromkeys([*MAP_SCORERS, *TABLE6_SCORERS, *TABLE7_SCORERS]))
"""G-Refine's own scorers and every indicator of Tables 6 and 7: the score evaluation's default."""


class Scorer(Protocol):
    """Scores one image (with its prompt) under each of its ``specs``' names."""

    specs: tuple[ScorerSpec, ...]

    def __call__(self, image: Image.Image, prompt: str) -> dict[str, float]: ...


def list_scorers() -> list[str]:
    """Every name :func:`create_scorers` accepts (whether its weights are present or not)."""
    metrics = [name for name in list_metrics() if not describe_metric(name).full_reference]
    return sorted(set(MAP_SCORERS) | set(metrics))


def scorer_spec(name: str) -> ScorerSpec:
    """The spec of scorer ``name``, without loading anything.

    Raises:
        KeyError: unknown name, or a full-reference metric (the message says which and why).
    """
    if name.lower() in MAP_SCORERS:
        return MAP_SCORERS[name.lower()]
    try:
        traits = describe_metric(name)
    except KeyError:
        raise KeyError(f"unknown scorer {name!r}; known scorers: {', '.join(list_scorers())}") from None
    if traits.full_reference:
        raise KeyError(f"{name!r} is a full-reference metric (it compares with a reference image), not a per-image quality scorer")
    kind: ScorerKind = "alignment" if traits.needs_prompt else "perceptual"
    return ScorerSpec(traits.name, kind, traits.lower_better, f"metric {traits.name} (grefine.eval.metrics)")


class MapScorer:
    """G-Refine's own scorers on one PQ-Map / AQ-Map pair; runs only the maps its names need,
    both from one image-tower pass when they read the same tower."""

    def __init__(self, pq_map: PQMap, aq_map: AQMap, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(MAP_SCORERS))
        if unknown:
            raise KeyError(f"not map scorers: {unknown}; map scorers: {sorted(MAP_SCORERS)}")
        self.pq_map = pq_map
        self.aq_map = aq_map
        self.specs = tuple(MAP_SCORERS[name] for name in names)

    def __call__(self, image: Image.Image, prompt: str) -> dict[str, float]:
        names = {spec.name for spec in self.specs}
        tower = TowerPasses([as_rgb_image(image)])  # one image-tower pass when both maps share it
        p = self.pq_map.read(tower)[0].score if names & {"pq", "pq_aq"} else None
        aq = self.aq_map.read(tower, [prompt])[0] if names & {"aq", "pq_aq", "clip_surgery"} else None
        values = {
            "pq": p,
            "aq": aq.score if aq else None,
            "pq_aq": p * aq.score if p is not None and aq else None,
            "clip_surgery": aq.prompt_score if aq else None,
        }
        return {name: float(values[name]) for name in names}


class MetricScorer:
    """A metric of :mod:`grefine.eval.metrics` as a scorer (the prompt goes to alignment metrics)."""

    def __init__(self, metric: Metric, spec: ScorerSpec) -> None:
        self.metric = metric
        self.specs = (spec,)

    def __call__(self, image: Image.Image, prompt: str) -> dict[str, float]:
        return {self.specs[0].name: self.metric(image, prompt if self.metric.needs_prompt else None)}


def create_scorers(
    names: Sequence[str],
    *,
    config: Optional[GRefineConfig] = None,
    maps: Optional[tuple[PQMap, AQMap]] = None,
    device: Union[str, torch.device, None] = None,
    metric_options: Optional[Mapping[str, dict]] = None,
) -> tuple[list[Scorer], dict[str, str]]:
    """Create the named scorers. Every name is checked before anything loads.

    Args:
        names: scorer names (see :func:`list_scorers`); repeats are ignored.
        config: builds PQ-Map and AQ-Map (its ``pq_map`` / ``aq_map`` sections, ``device`` and
            ``dtype``) when ``maps`` is not given; default :class:`GRefineConfig` (the paper's).
        maps: an already-built (PQMap, AQMap) pair to use instead.
        device: the metrics' device (default: the config's).
        metric_options: per-metric keyword arguments for :func:`grefine.eval.metrics.create_metric`
            (e.g. ``{"hps": {"checkpoint": "path/hpc.pt"}}``).

    Returns:
        The scorers (one shared :class:`MapScorer` for the map names, one :class:`MetricScorer`
        per metric) and, for each metric that cannot be created here (missing weights or
        package), the reason.

    Raises:
        KeyError: an unknown or full-reference name.
    """
    specs = list({spec.name: spec for spec in (scorer_spec(name) for name in names)}.values())
    config = config or GRefineConfig()
    device = torch.device(device) if device is not None else resolve_device(config.device)
    scorers: list[Scorer] = []
    map_names = [spec.name for spec in specs if spec.name in MAP_SCORERS]
    if map_names:
        if maps is None:
            map_device = resolve_device(config.device)
            maps = build_maps(config, map_device, resolve_dtype(config.dtype, map_device))
        scorers.append(MapScorer(*maps, map_names))
    failures: dict[str, str] = {}
    online = hub_reachable()  # asked once: offline, no metric tries a download
    for spec in specs:
        if spec.name in MAP_SCORERS:
            continue
        try:
            metric = create_metric(spec.name, device=device, online=online, **(metric_options or {}).get(spec.name, {}))
        except MetricUnavailable as err:
            failures[spec.name] = str(err)
            continue
        scorers.append(MetricScorer(metric, spec))
    return scorers, failures
