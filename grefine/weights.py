"""Pre-flight check of every weight a configuration needs, before any model is loaded.

With the hub reachable, nothing is checked here (missing files are downloaded on load). Without
it (no network, or ``HF_HUB_OFFLINE=1``), each source must be a local path or already in the
Hugging Face cache; all that are not are reported together in one message, at once, instead of
one slow failure per model after retries.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

from grefine.config import GRefineConfig
from grefine.errors import CHECKPOINTS_HELP


class WeightsUnavailableError(OSError):
    """Weights needed by a configuration are neither local, cached, nor downloadable."""


@dataclass(frozen=True)
class WeightSource:
    """One thing to load: what it is, where from (hub id or path), and the config key naming it."""

    what: str
    source: str
    config_key: str
    files: tuple[str, ...] = ()


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub endpoint cannot be connected to."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_files_only=True)
        return True
    except Exception:  # LocalEntryNotFoundError, invalid repo ids, ...
        return False


def is_available(source: WeightSource) -> bool:
    """A local path with its expected files, or a hub repository in the local cache."""
    path = Path(source.source)
    if path.exists():
        return all((path / name).exists() for name in source.files)
    if source.source.startswith((".", "/", "~")) or source.files:
        return False
    return _hub_cached(source.source)


def _open_clip_repo(model_name: str, pretrained: Optional[str]) -> Optional[str]:
    if pretrained is None or Path(pretrained).exists():
        return pretrained
    import open_clip

    if model_name.startswith("hf-hub:"):
        return model_name[len("hf-hub:"):]
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    hub = cfg.get("hf_hub", "")
    return hub.strip("/") or None


def map_weights(config: GRefineConfig) -> list[WeightSource]:
    """What the map sections (``pq_map``, ``aq_map``) load: their CLIP (one when both use the
    same weights) and PQ-Map's quality embeddings — all that :func:`grefine.pipeline.build_maps`
    and the score evaluation's map scorers need (tiny-random sections need nothing)."""
    needed: list[WeightSource] = []
    clip_sections = [("PQ-Map CLIP", "pq_map", config.pq_map), ("AQ-Map CLIP", "aq_map", config.aq_map)]
    shared = not config.pq_map.tiny_random and (config.pq_map.model_name, config.pq_map.pretrained) == (
        config.aq_map.model_name,
        config.aq_map.pretrained,
    )
    if shared:
        clip_sections = [("PQ-Map and AQ-Map CLIP", "pq_map", config.pq_map)]
    for what, key, section in clip_sections:
        if section.tiny_random:
            continue
        repo = _open_clip_repo(section.model_name, section.pretrained)
        if repo is None:
            continue
        needed.append(WeightSource(f"{what} {section.model_name}/{section.pretrained}", repo, f"{key}.pretrained"))
    pq = config.pq_map
    if not pq.tiny_random and pq.embeddings:
        files = tuple(f"PQ-{f}.pth" for f in ("overall", "technical", "rational", "natural"))
        needed.append(WeightSource("PQ-Map quality embeddings", pq.embeddings, "pq_map.embeddings", files))
    return needed


def required_weights(config: GRefineConfig) -> list[WeightSource]:
    """Everything the configuration will load: the maps' weights (:func:`map_weights`) and the
    two stages' — stage 2's caption model too when it has one (tiny-random sections need nothing)."""
    needed = map_weights(config)
    if not config.stage1.tiny_random:
        needed.append(WeightSource("SDXL inpainting (stage 1)", config.stage1.model, "stage1.model"))
        if config.stage1.vae:
            needed.append(WeightSource("VAE replacing stage 1's own", config.stage1.vae, "stage1.vae"))
    stage2 = config.stage2
    if stage2.type and not stage2.tiny_random and stage2.strength > 0 and not config.ablation.drop_stage2:
        needed.append(WeightSource("Stable Diffusion 1.5 base (stage 2)", stage2.base_model, "stage2.base_model"))
        needed.append(WeightSource("PASD unet + controlnet (stage 2)", stage2.pasd_model, "stage2.pasd_model"))
        caption = _open_clip_repo(stage2.caption_model, stage2.caption_pretrained) if stage2.caption_model else None
        if caption is not None:
            needed.append(
                WeightSource(f"caption model {stage2.caption_model}/{stage2.caption_pretrained} (stage 2)", caption, "stage2.caption_pretrained")
            )
    return list({(w.source, w.files): w for w in needed}.values())


def _nltk_missing() -> list[str]:
    """A line per NLTK data package AQ-Map needs (POS tagger, stop words) that neither loads nor
    downloads, saying how to get it."""
    from grefine.maps.syntax_tree import (
        DOWNLOAD_COMMAND,
        STOPWORDS_DOWNLOAD_COMMAND,
        NLTKDataUnavailableError,
        load_stopwords,
        load_tagger,
    )

    lines = []
    for what, load, command in (
        ("NLTK POS tagger (AQ-Map prompt parsing)", load_tagger, DOWNLOAD_COMMAND),
        ("NLTK stop words (AQ-Map phrase scoring)", load_stopwords, STOPWORDS_DOWNLOAD_COMMAND),
    ):
        try:
            load()
        except NLTKDataUnavailableError:
            lines.append(f"  - {what}: run `{command}` or set NLTK_DATA")
    return lines


def check_weights(config: GRefineConfig, online: Optional[bool] = None, *, maps_only: bool = False) -> None:
    """Raise :class:`WeightsUnavailableError` listing every missing weight (and NLTK's tagger and
    stop words, which AQ-Map needs unless the ablation drops it) when they cannot be had.
    ``maps_only``: only the map sections' weights (:func:`map_weights`), e.g. for scoring images
    with PQ-Map and AQ-Map without refining them."""
    require_weights(
        map_weights(config) if maps_only else required_weights(config),
        f"config {config.source}",
        online=online,
        other_missing=[] if config.ablation.drop_aq_map else _nltk_missing(),
        hint="For a smoke test without weights use configs/tiny-random.yaml.",
    )


def require_weights(
    needed: Sequence[WeightSource],
    what: str,
    *,
    online: Optional[bool] = None,
    other_missing: Sequence[str] = (),
    hint: str = "",
) -> None:
    """The one pre-flight message: raise :class:`WeightsUnavailableError` naming ``what`` (a
    config, a benchmark method) and listing every source of ``needed`` that cannot be had, with
    its config key, plus ``other_missing`` lines; ``hint`` ends the message."""
    local_missing = [w for w in needed if w.files and not is_available(w)]
    online = hub_reachable() if online is None else online
    missing = local_missing if online else [w for w in needed if not is_available(w)]
    lines = [f"  - {w.what}: '{w.source}' (config key {w.config_key})" for w in missing]
    lines += list(other_missing)
    if lines:
        listing = "\n".join(lines)
        state = "" if online else " and the Hugging Face hub cannot be reached"
        raise WeightsUnavailableError(
            f"grefine cannot start with {what}: these weights are missing{state}:\n"
            f"{listing}\n{CHECKPOINTS_HELP} {hint}".rstrip()
        )
