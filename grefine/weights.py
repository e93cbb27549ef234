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
from grefine.errors import CHECKPOINTS_HELP, MissingItemsError

HUB = "the Hugging Face hub"
PQ_EMBEDDINGS_ORIGIN = "the G-Refine authors' release on GitHub (github.com/Q-Future/Q-Refine, folder embeding/)"
PASD_ORIGIN = "the PASD authors' release on GitHub (github.com/yangxy/PASD: the folder with unet/ and controlnet/)"


class WeightsUnavailableError(MissingItemsError):
    """Weights (or data) needed by a configuration are neither local, cached, nor downloadable;
    the message lists each, one per line, with where it comes from."""


@dataclass(frozen=True)
class WeightSource:
    """One thing to load: what it is, where from (hub id or path), the config key naming it, the
    files a local folder must hold, and ``origin``: where a local path's files come from (empty:
    a hub id, from :data:`HUB`)."""

    what: str
    source: str
    config_key: str
    files: tuple[str, ...] = ()
    origin: str = ""

    def missing_line(self) -> str:
        """One line of the pre-flight message: this source, its config key and where it comes from."""
        key = f"option {self.config_key}" if self.config_key.startswith("--") else f"config key {self.config_key}"
        if self.origin and _looks_local(self.source):
            files = f" (the files {', '.join(self.files)})" if self.files else ""
            return f"  - {self.what}: '{self.source}'{files} ({key}) is missing; it comes from {self.origin}"
        return f"  - {self.what}: '{self.source}' ({key}), from {HUB}: not in its local cache"


def _looks_local(source: str) -> bool:
    """A path on this machine rather than a hub id (``checkpoints/...`` is the shipped configs' folder)."""
    return Path(source).exists() or source.startswith((".", "/", "~")) or Path(source).parts[:1] == ("checkpoints",)


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


def clip_source(what: str, model_name: str, pretrained: Optional[str], key: str) -> list[WeightSource]:
    """Where open_clip's ``model_name`` / ``pretrained`` weights come from (a hub repository or a
    local file), as a list of one :class:`WeightSource` (none when there is nothing to check)."""
    repo = _open_clip_repo(model_name, pretrained)
    return [] if repo is None else [WeightSource(f"{what} {model_name}/{pretrained}", repo, key)]


def pq_embeddings_source(folder: str, key: str) -> WeightSource:
    """The folder of the four official PQ-Map quality embeddings (``PQ-<factor>.pth``)."""
    files = tuple(f"PQ-{f}.pth" for f in ("overall", "technical", "rational", "natural"))
    return WeightSource("PQ-Map quality embeddings", folder, key, files, PQ_EMBEDDINGS_ORIGIN)


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
        if not section.tiny_random:
            needed += clip_source(what, section.model_name, section.pretrained, f"{key}.pretrained")
    pq = config.pq_map
    if not pq.tiny_random and pq.embeddings:
        needed.append(pq_embeddings_source(pq.embeddings, "pq_map.embeddings"))
    return needed


def required_weights(config: GRefineConfig) -> list[WeightSource]:
    """Everything the configuration will load: the maps' weights (:func:`map_weights`) and the
    two stages' (tiny-random sections need nothing)."""
    needed = map_weights(config)
    if not config.stage1.tiny_random:
        needed.append(WeightSource("SDXL inpainting (stage 1)", config.stage1.model, "stage1.model"))
        if config.stage1.vae:
            needed.append(WeightSource("VAE replacing stage 1's own", config.stage1.vae, "stage1.vae"))
    stage2 = config.stage2
    if stage2.type and not stage2.tiny_random and stage2.strength > 0 and not config.ablation.drop_stage2:
        needed.append(WeightSource("Stable Diffusion 1.5 base (stage 2)", stage2.base_model, "stage2.base_model"))
        needed.append(WeightSource("PASD unet + controlnet (stage 2)", stage2.pasd_model, "stage2.pasd_model", origin=PASD_ORIGIN))
    return list({(w.source, w.files): w for w in needed}.values())


def missing_nltk_data() -> list[str]:
    """A line per NLTK data package AQ-Map needs (POS tagger, stop words) that neither loads nor
    downloads, saying where it comes from and how to get it."""
    from grefine.maps.syntax_tree import (
        STOPWORDS_RESOURCE,
        TAGGER_RESOURCE,
        NLTKDataUnavailableError,
        load_stopwords,
        load_tagger,
    )

    lines = []
    for what, load, resource, folder in (
        ("NLTK POS tagger (AQ-Map prompt parsing)", load_tagger, TAGGER_RESOURCE, f"taggers/{TAGGER_RESOURCE}/"),
        ("NLTK stop words (AQ-Map phrase scoring)", load_stopwords, STOPWORDS_RESOURCE, f"corpora/{STOPWORDS_RESOURCE}.zip"),
    ):
        try:
            load()
        except NLTKDataUnavailableError:
            lines.append(
                f"  - {what}: NLTK data '{resource}', downloaded from NLTK's data server on first use; neither installed nor "
                f"downloadable here: run `python -m nltk.downloader {resource}` where there is internet, or set NLTK_DATA to a "
                f"folder holding {folder}"
            )
    return lines


def check_weights(config: GRefineConfig, online: Optional[bool] = None, *, maps_only: bool = False) -> None:
    """Raise :class:`WeightsUnavailableError` listing every missing weight (and NLTK's tagger and
    stop words, which AQ-Map needs unless the ablation drops it) when they cannot be had.
    ``maps_only``: only the map sections' weights (:func:`map_weights`), e.g. for scoring images
    with PQ-Map and AQ-Map without refining them. The message suggests the smoke configuration
    only to a config that needs weights."""
    needed = map_weights(config) if maps_only else required_weights(config)
    nltk = [] if config.ablation.drop_aq_map else missing_nltk_data()
    smoke = "For a smoke test without weights use configs/tiny-random.yaml" + (" (it needs the NLTK data too)." if nltk else ".")
    require_weights(needed, f"config {config.source}", online=online, other_missing=nltk, hint=smoke if needed else "")


def require_weights(
    needed: Sequence[WeightSource],
    what: str,
    *,
    online: Optional[bool] = None,
    other_missing: Sequence[str] = (),
    hint: str = "",
) -> None:
    """The one pre-flight message: raise :class:`WeightsUnavailableError` naming ``what`` (a
    config, a benchmark method) and listing, one per line, every source of ``needed`` that
    cannot be had (its config key and where it comes from), plus ``other_missing`` lines;
    ``hint`` ends the message."""
    local_missing = [w for w in needed if w.files and not is_available(w)]
    online = hub_reachable() if online is None else online
    missing = local_missing if online else [w for w in needed if not is_available(w)]
    lines = [w.missing_line() for w in missing] + list(other_missing)
    if lines:
        hub_listed = any(HUB in line for line in lines)
        state = "" if online or not hub_listed else f" ({HUB} cannot be reached, so nothing can be downloaded)"
        raise WeightsUnavailableError(
            f"cannot start with {what}; missing{state}:\n" + "\n".join(lines) + f"\n{CHECKPOINTS_HELP} {hint}".rstrip()
        )
