"""Every weight a configuration needs: where it comes from, whether it is here, and fetching it.

* :func:`required_weights` (:func:`map_weights` for the maps alone) lists a config's
  :class:`WeightSource`\\ s. A source is a local path, files of a Hugging Face hub repository
  (:class:`HubFiles`: chosen from the repository's listing the way the loaders choose them —
  diffusers' variant and safetensors preferences, open_clip's file names) or files at plain URLs
  (:class:`UrlFile`: PQ-Map's official embeddings, pyiqa's release files), checked when their
  SHA-256 is known. :func:`open_clip_weights` describes any open_clip model, and
  :func:`grefine.eval.metric_weights.metric_weights` the metrics'.
* :func:`check_weights` / :func:`require_weights`: the pre-flight when nothing can be downloaded
  (no network, or ``HF_HUB_OFFLINE=1``): each source must be a local path or already in its
  cache; all that are not are reported together in one message, at once, instead of one slow
  failure per model after retries.
* :func:`prepare_weights`: when the hub is reachable, before any weight is downloaded,
  :func:`plan_downloads` says what will be fetched, from where, about how large (from the hub's
  file metadata), into which cache and the free space there — and refuses at once, in one line,
  when it cannot fit — then :func:`fetch_plan` fetches it: hub files with ``huggingface_hub``
  into its cache (what the loaders then read, online or with ``HF_HUB_OFFLINE=1``), URL files
  into a temporary file, checked, then renamed into place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import urllib.request
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from grefine.config import GRefineConfig
from grefine.errors import CHECKPOINTS_HELP, MissingItemsError
from grefine.maps import pq_embeddings
from grefine.maps.pq_map import QUALITY_FACTORS


class WeightsUnavailableError(MissingItemsError):
    """Weights (or data) needed by a configuration are neither local, cached, nor downloadable;
    the message lists each, one per line, with where it comes from."""


HUB = "the Hugging Face hub"
LOCAL_ORIGINS = {
    "embeddings": "'official' fetches the authors' files from github.com/Q-Future/Q-Refine",
    "pasd_model": "the PASD authors' release is the hub's yangtao9009/PASD (github.com/yangxy/PASD)",
}
"""Where the files of a local path come from, by the config key's (or option's) last part."""


@dataclass(frozen=True)
class HubFiles:
    """Which files of hub repository ``repo_id`` a loader reads (:meth:`select`).

    ``layout``: ``"pipeline"`` — a diffusers pipeline: ``model_index.json`` and the folder of each
    component it names; ``"folders"`` — the given ``folders`` (``""``: the repository's top);
    ``"files"`` — for each group of ``names``, the first the repository holds (e.g. open_clip's
    ``open_clip_model.safetensors`` before ``open_clip_pytorch_model.bin``). In a folder that
    holds weights, only ``config.json``, the weight files the loader picks (safetensors before
    ``.bin``; ``variant`` files, e.g. ``*.fp16.safetensors``, when asked for and present) and
    their shard index are read; any other folder (tokenizer, scheduler) is read whole."""

    repo_id: str
    layout: str = "folders"
    folders: tuple[str, ...] = ("",)
    names: tuple[tuple[str, ...], ...] = ()
    variant: Optional[str] = None

    def select(self, listing: Collection[str], components: Sequence[str] = ()) -> list[str]:
        """The files to fetch out of ``listing`` (every path in the repository); ``components``:
        a pipeline's component folders (from its ``model_index.json``). Raises ``LookupError``
        naming a folder or file the repository does not hold."""
        if self.layout == "files":
            chosen = []
            for group in self.names:
                present = [name for name in group if name in listing]
                if not present:
                    raise LookupError(f"the repository holds none of {', '.join(group)}")
                chosen.append(present[0])
            return chosen
        folders = components if self.layout == "pipeline" else self.folders
        chosen = ["model_index.json"] if self.layout == "pipeline" else []
        for folder in folders:
            files = _folder_files(listing, folder, self.variant)
            if not files:
                raise LookupError(f"the repository has no {folder + '/' if folder else 'files at its top'}")
            chosen += files
        return chosen


_WEIGHT_FILE = re.compile(r"^(?P<stem>[^.]+?)(?:\.(?P<variant>[^.]+?))?(?:-\d{5}-of-\d{5})?\.(?P<ext>safetensors|bin)$")
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")  # diffusers' and transformers' names


def _folder_files(listing: Collection[str], folder: str, variant: Optional[str]) -> list[str]:
    """The files a diffusers/transformers loader reads in ``folder`` (see :class:`HubFiles`)."""
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    direct = sorted(path for path in listing if path.startswith(prefix) and "/" not in path[len(prefix):])
    weights = [(path, match) for path in direct if (match := _WEIGHT_FILE.match(path[len(prefix):])) and match["stem"] in _WEIGHT_STEMS]
    if not weights:
        return direct
    for ext in ("safetensors", "bin"):
        for wanted in ([variant] if variant else []) + [None]:
            picked = [path for path, match in weights if match["ext"] == ext and match["variant"] == wanted]
            if picked:
                stems = {f"{prefix}{_WEIGHT_FILE.match(path[len(prefix):])['stem']}.{ext}.index" for path in picked}
                index = [path for path in direct if path.endswith(".json") and any(path.startswith(stem) for stem in stems)]
                config = [path for path in direct if path == f"{prefix}config.json"]
                return config + index + picked
    return direct


@dataclass(frozen=True)
class UrlFile:
    """A file at a plain URL, kept at ``target``; ``sha256`` / ``size`` checked when known."""

    url: str
    target: str
    sha256: Optional[str] = None
    size: Optional[int] = None

    @property
    def present(self) -> bool:
        path = Path(self.target)
        return path.is_file() and (self.sha256 is None or pq_embeddings.sha256_of(path) == self.sha256)


@dataclass(frozen=True)
class WeightSource:
    """One thing to load: what it is, where from (hub id, path or URL), and the config key
    naming it. ``files``: what a local folder must hold; ``hub`` / ``urls``: how to fetch it;
    ``note``: set when its own library fetches it on creation and grefine cannot say in advance
    which files (the plan lists it with the note)."""

    what: str
    source: str
    config_key: str
    files: tuple[str, ...] = ()
    hub: Optional[HubFiles] = None
    urls: tuple[UrlFile, ...] = ()
    note: str = ""

    @property
    def origin(self) -> str:
        """Where it comes from, in words."""
        if self.hub is not None:
            return f"hub {self.hub.repo_id}"
        if self.urls:
            return self.urls[0].url.rsplit("/", 1)[0] if len(self.urls) > 1 else self.urls[0].url
        return self.source

    def missing_line(self) -> str:
        """One line of the pre-flight message: this source, its config key (or option) and where
        it comes from: the Hugging Face hub, a URL (e.g. GitHub), or a local path."""
        key = f"option {self.config_key}" if self.config_key.startswith("--") else f"config key {self.config_key}"
        if self.hub is not None:
            return f"  - {self.what}: '{self.source}' ({key}), from {HUB}: not in its local cache"
        if self.urls:
            where = "" if self.origin == self.source else f", from {self.origin}"
            return f"  - {self.what}: '{self.source}' ({key}){where}: not downloaded yet"
        if self.note:
            return f"  - {self.what}: {self.source} ({key}), {self.note}: not in its cache"
        files = f" (the files {', '.join(self.files)})" if self.files else ""
        origin = LOCAL_ORIGINS.get(self.config_key.lstrip("-").rsplit(".", 1)[-1])
        return f"  - {self.what}: '{self.source}'{files} ({key}) is missing here" + (f"; {origin}" if origin else "")


def is_local(source: str) -> bool:
    """A path (existing, or spelled as one) rather than a hub id."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def model_source(
    what: str,
    source: str,
    config_key: str,
    *,
    layout: str = "folders",
    folders: tuple[str, ...] = ("",),
    variant: Optional[str] = None,
    local_files: tuple[str, ...] = (),
) -> WeightSource:
    """A diffusers/transformers model (or pipeline) in a local folder (which must hold
    ``local_files``) or a hub repository (:class:`HubFiles` with ``layout``, ``folders``, ``variant``)."""
    if is_local(source):
        return WeightSource(what, source, config_key, files=local_files)
    return WeightSource(what, source, config_key, hub=HubFiles(source, layout, folders, variant=variant))


def open_clip_weights(what: str, model_name: str, pretrained: Optional[str], config_key: str) -> Optional[WeightSource]:
    """The weights ``open_clip.create_model(model_name, pretrained=pretrained)`` loads: a local
    file, the hub file its pretrained config names (its safetensors alternative first, as
    open_clip tries it), or for ``hf-hub:`` models their ``open_clip_config.json`` and weights.
    None when there is nothing to fetch (no pretrained weights, or a tag open_clip does not know:
    it reports that itself)."""
    if pretrained is None:
        return None
    if Path(pretrained).expanduser().exists():
        return WeightSource(what, pretrained, config_key)
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if model_name.startswith("hf-hub:"):
        repo, names = model_name[len("hf-hub:"):], ((HF_CONFIG_NAME,), (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME))
    else:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
        if not cfg.get("hf_hub"):
            return WeightSource(what, cfg["url"], config_key, note="fetched by open_clip from this URL when loaded") if cfg.get("url") else None
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else filename.rsplit(".", 1)[0] + ".safetensors"
        names = ((safe, filename) if filename.endswith((".bin", ".pth")) else (filename,),)
    return WeightSource(what, repo, config_key, hub=HubFiles(repo, "files", names=names))


def official_embeddings_source(config_key: str = "pq_map.embeddings") -> WeightSource:
    """PQ-Map's official embeddings: four checked files at :func:`pq_embeddings.base_url`, kept in
    :func:`pq_embeddings.cache_folder`."""
    folder, base = pq_embeddings.cache_folder(), pq_embeddings.base_url()
    urls = tuple(UrlFile(f"{base}/{item.name}", str(folder / item.name), item.sha256, item.size) for item in pq_embeddings.OFFICIAL_FILES)
    return WeightSource("PQ-Map quality embeddings", pq_embeddings.OFFICIAL, config_key, urls=urls)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: nothing may be downloaded."""
    return pq_embeddings.downloads_disabled()


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub endpoint cannot be connected to."""
    if hub_offline():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def hub_files_cached(hub: HubFiles) -> bool:
    """Whether the files a loader reads from ``hub`` are in the Hugging Face cache: those
    :meth:`HubFiles.select` picks from the repository's listing cached by the download (or, for
    files fetched one by one, without a cached listing: one of each ``names`` group; any snapshot
    of the repository for folders)."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(hub.repo_id, name), str)

    try:
        from huggingface_hub import get_cached_repo_tree  # huggingface_hub >= 1.x

        listing = {entry.path for entry in get_cached_repo_tree(hub.repo_id)}
    except Exception:  # no listing cached, an invalid id, or an older huggingface_hub
        listing = None
    if listing is None and hub.layout == "files":
        return all(any(cached(name) for name in group) for group in hub.names)
    if listing is None:
        try:
            snapshot_download(hub.repo_id, local_files_only=True)
            return True
        except Exception:  # LocalEntryNotFoundError, an incomplete snapshot, ...
            return False
    try:
        components = _cached_components(hub.repo_id) if hub.layout == "pipeline" else ()
        return all(cached(name) for name in hub.select(listing, components))
    except (LookupError, OSError, ValueError):
        return False


def _cached_components(repo_id: str) -> list[str]:
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo_id, "model_index.json")
    if not isinstance(index, str):
        raise LookupError("model_index.json is not cached")
    return _components(Path(index))


def is_available(source: WeightSource) -> bool:
    """A local path with its expected files, checked URL files in their place, or a hub
    repository in the local cache."""
    if source.urls:
        return all(url.present for url in source.urls)
    path = Path(source.source).expanduser()
    if path.exists():
        return all((path / name).exists() for name in source.files)
    if source.hub is None:
        return False
    return hub_files_cached(source.hub)


def reads_variant_files(config: GRefineConfig) -> bool:
    """Whether the config's models run in fp16 or bf16 (``dtype: auto`` is fp16 on a GPU): the
    ``stage1.variant`` files are read then (:data:`grefine.pipeline.HALF_DTYPES`)."""
    if config.dtype != "auto":
        return config.dtype in ("fp16", "bf16")
    if config.device == "auto":
        import torch

        return torch.cuda.is_available()
    return config.device.startswith("cuda")


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
        source = open_clip_weights(f"{what} {section.model_name}/{section.pretrained}", section.model_name, section.pretrained, f"{key}.pretrained")
        if source is not None:
            needed.append(source)
    pq = config.pq_map
    if not pq.tiny_random and pq.embeddings:
        needed.append(embeddings_source(pq.embeddings, "pq_map.embeddings"))
    return needed


def embeddings_source(embeddings: str, config_key: str) -> WeightSource:
    """PQ-Map's quality embeddings: the official files (``official``) or a folder of ``PQ-*.pth``."""
    if embeddings == pq_embeddings.OFFICIAL:
        return official_embeddings_source(config_key)
    files = tuple(f"PQ-{factor}.pth" for factor in QUALITY_FACTORS)
    return WeightSource("PQ-Map quality embeddings", embeddings, config_key, files)


def required_weights(config: GRefineConfig) -> list[WeightSource]:
    """Everything the configuration will load: the maps' weights (:func:`map_weights`) and the
    two stages' — stage 2's caption model too when it has one (tiny-random sections need nothing)."""
    needed = map_weights(config)
    if not config.stage1.tiny_random:
        variant = config.stage1.variant if reads_variant_files(config) else None
        needed.append(model_source("SDXL inpainting (stage 1)", config.stage1.model, "stage1.model", layout="pipeline", variant=variant))
        if config.stage1.vae:
            needed.append(model_source("VAE replacing stage 1's own", config.stage1.vae, "stage1.vae"))
    stage2 = config.stage2
    if stage2.type and not stage2.tiny_random and stage2.strength > 0 and not config.ablation.drop_stage2:
        base = ("vae", "text_encoder", "tokenizer", "scheduler")
        needed.append(model_source("Stable Diffusion 1.5 base (stage 2)", stage2.base_model, "stage2.base_model", folders=base))
        needed.append(pasd_source("PASD unet + controlnet (stage 2)", stage2.pasd_model, stage2.pasd_subfolder, "stage2.pasd_model"))
        if stage2.caption_model:
            what = f"caption model {stage2.caption_model}/{stage2.caption_pretrained} (stage 2)"
            caption = open_clip_weights(what, stage2.caption_model, stage2.caption_pretrained, "stage2.caption_pretrained")
            if caption is not None:
                needed.append(caption)
    return list({(w.source, w.files, w.hub): w for w in needed}.values())


def pasd_source(what: str, pasd_model: str, subfolder: Optional[str], config_key: str) -> WeightSource:
    """PASD's ``unet/`` and ``controlnet/`` inside ``subfolder`` of ``pasd_model`` (hub id or folder)."""
    inside = (subfolder or "").strip("/")
    folders = tuple(f"{inside}/{part}" if inside else part for part in ("unet", "controlnet"))
    return model_source(what, pasd_model, config_key, folders=folders, local_files=folders)


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


def check_weights(
    config: GRefineConfig,
    online: Optional[bool] = None,
    *,
    maps_only: bool = False,
    extra: Sequence[WeightSource] = (),
) -> None:
    """Raise :class:`WeightsUnavailableError` listing every missing weight (and NLTK's tagger and
    stop words, which AQ-Map needs unless the ablation drops it) when they cannot be had.
    ``maps_only``: only the map sections' weights (:func:`map_weights`), e.g. for scoring images
    with PQ-Map and AQ-Map without refining them. ``extra``: more sources the run needs (e.g. the
    files of the metric ``verify.select`` names). The message suggests the smoke configuration
    only to a config that needs weights."""
    own = map_weights(config) if maps_only else required_weights(config)
    nltk = [] if config.ablation.drop_aq_map else missing_nltk_data()
    smoke = "For a smoke test without weights use configs/tiny-random.yaml" + (" (it needs the NLTK data too)." if nltk else ".")
    require_weights([*own, *extra], f"config {config.source}", online=online, other_missing=nltk, hint=smoke if own else "")


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
        downloads = any(w.hub is not None or w.urls or w.note for w in missing)
        state = "" if online or not downloads else f" ({HUB} cannot be reached or HF_HUB_OFFLINE is set, so nothing can be downloaded)"
        raise WeightsUnavailableError(
            f"cannot start with {what}; missing{state}:\n" + "\n".join(lines) + f"\n{CHECKPOINTS_HELP} {hint}".rstrip()
        )


# ----------------------------------------------------------------------- the download plan


@dataclass
class PlannedSource:
    """The files of one source that are not in their cache yet (name in the repository or URL,
    size in bytes when known), and that cache."""

    source: WeightSource
    files: list[tuple[str, Optional[int]]]
    cache: Path

    @property
    def size(self) -> int:
        return sum(size or 0 for _, size in self.files)


@dataclass
class DownloadPlan:
    """What :func:`fetch_plan` will fetch, source by source (:func:`plan_downloads`)."""

    items: list[PlannedSource] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The plan in words: one line per source, then each cache with its share and free space."""
        if not self.items:
            return ["grefine: every weight is in its cache already; nothing to download."]
        lines = ["grefine: downloading the weights this run needs first (once; later runs read the caches):"]
        for item in self.items:
            if item.source.note and not item.files:
                lines.append(f"  - {item.source.what}: {item.source.note}")
                continue
            unknown = " (size unknown)" if any(size is None for _, size in item.files) else ""
            count = f"{len(item.files)} file{'s' * (len(item.files) != 1)}"
            lines.append(f"  - {item.source.what}: {count}, {format_size(item.size)}{unknown} from {item.source.origin}")
        for cache, needed in self.needs().items():
            lines.append(f"  into {cache}: {format_size(needed)} ({format_size(free_space(cache))} free there)")
        return lines

    def needs(self) -> dict[Path, int]:
        """Bytes to download into each cache folder."""
        needs: dict[Path, int] = {}
        for item in self.items:
            if item.files:
                needs[item.cache] = needs.get(item.cache, 0) + item.size
        return needs

    def check_space(self) -> None:
        """Refuse (one line) when the downloads cannot fit: the caches on one disk together need
        more than its free space."""
        by_disk: dict[int, list[tuple[Path, int]]] = {}
        for cache, needed in self.needs().items():
            by_disk.setdefault(_existing(cache).stat().st_dev, []).append((cache, needed))
        for caches in by_disk.values():
            needed, free = sum(n for _, n in caches), free_space(caches[0][0])
            if needed > free:
                where = " and ".join(str(cache) for cache, _ in caches)
                raise WeightsUnavailableError(
                    f"not enough free space for the weights: {format_size(needed)} to download into {where}, "
                    f"{format_size(free)} free there; free some space or point HF_HOME (hub models), TORCH_HOME "
                    "(pyiqa weights) or XDG_CACHE_HOME (grefine's embeddings) at a larger disk."
                )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds (or will hold) ``path``."""
    return shutil.disk_usage(_existing(path)).free


def format_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def plan_downloads(sources: Sequence[WeightSource]) -> DownloadPlan:
    """What fetching ``sources`` needs (network: hub listings with file sizes, a pipeline's
    ``model_index.json``, and a HEAD request per URL file of unknown size; no weight is
    downloaded). Local paths and files already cached are left out.

    Raises:
        WeightsUnavailableError: a hub repository or one of its files cannot be had (not found,
            gated, no such folder): one message listing every such source.
    """
    from huggingface_hub import HfApi

    api, plan, problems = HfApi(), DownloadPlan(), []
    for source in {(w.source, w.files, w.hub, w.urls): w for w in sources}.values():
        try:
            item = _plan_source(source, api)
        except Exception as err:  # not found, gated, no such file: said per source
            problems.append(f"  - {source.what}: {source.origin} (config key {source.config_key}): {_reason(err)}")
            continue
        if item is not None and (item.files or item.source.note):
            plan.items.append(item)
    if problems:
        raise WeightsUnavailableError("grefine cannot download these weights:\n" + "\n".join(problems) + f"\n{CHECKPOINTS_HELP}")
    return plan


def _plan_source(source: WeightSource, api) -> Optional[PlannedSource]:
    if source.urls:
        missing = [url for url in source.urls if not url.present]
        files = [(url.url, url.size if url.size is not None else _remote_size(url.url)) for url in missing]
        return PlannedSource(source, files, _common_folder([Path(url.target).parent for url in source.urls]))
    if source.hub is None:
        return PlannedSource(source, [], Path(".")) if source.note else None
    from huggingface_hub import constants, try_to_load_from_cache

    hub = source.hub
    info = api.model_info(hub.repo_id, files_metadata=True)
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or ()}
    components = _pipeline_components(hub.repo_id, info.sha) if hub.layout == "pipeline" else ()
    files = [
        (name, sizes[name])
        for name in hub.select(sizes, components)
        if not isinstance(try_to_load_from_cache(hub.repo_id, name, revision=info.sha), str)
    ]
    return PlannedSource(source, files, Path(constants.HF_HUB_CACHE))


def _pipeline_components(repo_id: str, revision: str) -> list[str]:
    """The component folders a diffusers pipeline's ``model_index.json`` names (the file itself,
    690 bytes, is the one thing read from a repository before the plan)."""
    from huggingface_hub import hf_hub_download

    return _components(Path(hf_hub_download(repo_id, "model_index.json", revision=revision)))


def _components(model_index: Path) -> list[str]:
    index = json.loads(model_index.read_text(encoding="utf-8"))
    return [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list) and value[0] is not None]


def _remote_size(url: str) -> Optional[int]:
    """The size a HEAD request reports (the hub's ``X-Linked-Size`` or ``Content-Length``), or None."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "grefine", "Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            size = response.headers.get("X-Linked-Size") or response.headers.get("Content-Length")
            return int(size) if size and size.isdigit() else None
    except (OSError, ValueError):
        return None


def _common_folder(folders: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(folder) for folder in folders])) if folders else Path(".")


def _reason(err: BaseException) -> str:
    """An error in one line, with the hint a missing or gated repository needs."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    text = " ".join(str(err).split())
    if isinstance(err, GatedRepoError):
        return f"the repository is gated: accept its terms on the hub and log in (hf auth login). ({text[:200]})"
    if isinstance(err, RepositoryNotFoundError):
        return "no such repository on the hub (check the id, or log in for a private one)"
    return f"{type(err).__name__}: {text[:300]}"


def fetch_plan(plan: DownloadPlan, *, say: Optional[Callable[[str], None]] = None, progress: bool = True) -> None:
    """Fetch every file of ``plan``: a hub repository's files with ``huggingface_hub``'s
    ``snapshot_download`` into its cache (its progress bars; files already complete are kept, a
    cut one is retried with a range request, and an interrupted run continues from the files it
    has), URL files with :func:`grefine.maps.pq_embeddings.fetch_verified` (checked, then renamed
    into place; nothing partial is ever left under a file's name).

    Raises:
        WeightsUnavailableError: a hub download failed (one line naming it and why; run again).
        grefine.maps.pq_embeddings.EmbeddingsUnavailableError: a URL file failed or its SHA-256 is
            wrong (:class:`~grefine.maps.pq_embeddings.EmbeddingHashError`; deleted).
    """
    for item in plan.items:
        if not item.files:
            continue
        if say is not None:
            say(f"grefine: fetching {item.source.what} from {item.source.origin} ({format_size(item.size)})")
        if item.source.hub is not None:
            _fetch_hub(item)
            continue
        for url in item.source.urls:
            if not url.present:
                pq_embeddings.fetch_verified(url.url, Path(url.target), sha256=url.sha256, size=url.size, progress=progress)


def _fetch_hub(item: PlannedSource) -> None:
    from huggingface_hub import snapshot_download

    repo = item.source.hub.repo_id
    try:
        snapshot_download(repo, allow_patterns=[name for name, _ in item.files])
    except Exception as err:  # connection cut, server error, disk full: one line, the cache keeps what is complete
        raise WeightsUnavailableError(
            f"downloading {item.source.what} from hub {repo} failed ({_reason(err)}); the files that are complete "
            "stay in the cache, run the same command again to fetch the rest."
        ) from err


def prepare_weights(sources: Sequence[WeightSource], *, say: Optional[Callable[[str], None]] = None) -> Optional[DownloadPlan]:
    """When the hub is reachable: plan (``say`` each line of it), refuse when the free space is
    too small, and fetch ``sources``; returns the plan. Offline (``HF_HUB_OFFLINE=1`` or no
    network) it returns None and downloads nothing: :func:`check_weights` then says what is missing.

    Raises:
        WeightsUnavailableError: a source cannot be had, the caches' disk is too small, or a
            download failed (one message each time).
    """
    if not hub_reachable():
        return None
    plan = plan_downloads(sources)
    if say is not None:
        for line in plan.lines():
            say(line)
    plan.check_space()
    fetch_plan(plan, say=say, progress=say is not None)
    return plan
