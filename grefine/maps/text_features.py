"""Eq. 5's text features ``C_T(text)``, encoded as the authors' code encodes them, and cached.

The authors' AQ-Map (``AQ-Map.py``, ``alignment_map``) encodes every text — the whole prompt,
each phrase, each noun and the empty "redundant" string — with CLIP-Surgery's
``encode_text_with_prompt_ensemble`` (their ``clip/clip.py`` l. 251-268): the text is put into
each of the 85 :data:`PROMPT_TEMPLATES` (CLIP's 80 ImageNet templates and five "... in the
scene." ones), each template's feature is L2-normalised, the 85 are averaged and the mean is
L2-normalised again. ``encoding="ensemble"`` (default) does exactly that; ``"bare"`` encodes the
text itself (one text-tower row, L2-normalised), Eq. 5 as printed.

An ensemble costs 85 text-tower rows per text, so :class:`TextFeatures`

* encodes each distinct text once, the rows of all texts it lacks in batches of
  ``rows_per_batch`` rows, each batch cut to its longest row (CLIP's text tower attends
  causally and reads the end-of-text token, so the padding after it never reaches the feature:
  the same feature as over the whole 77-token context, several times faster for short rows);
* keeps every feature in memory (the most recent ``max_memory`` texts) for later calls: a database
  repeats prompts and nouns, and a second maps call on the same prompt (a verification pass on
  the refined image) encodes nothing;
* and on disk across runs (``cache_dir``): one ``.npy`` file per text under a folder named by
  the text tower's fingerprint (a SHA-256 of its architecture, weights, dtype and tokenizer) and
  the encoding (with the templates' own hash). A feature is stored in float32 as computed, so a
  cached feature equals the computed one bit for bit. A file that cannot be read is recomputed
  and rewritten; a folder that cannot be written leaves the cache in memory only (one warning).

The disk cache's default folder is ``$GREFINE_CACHE_DIR/text-features``, else
``$XDG_CACHE_HOME/grefine/text-features`` (``~/.cache/grefine/text-features``); a config's
``aq_map.text_cache`` names another folder, or ``null`` for memory only.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from grefine.maps.clip_surgery import encode_text_embeddings, text_tower

TextEncoding = Literal["ensemble", "bare"]
TEXT_ENCODINGS = ("ensemble", "bare")
CACHE_ENV = "GREFINE_CACHE_DIR"
"""Environment variable naming grefine's cache folder (text features go to its ``text-features/``)."""

PROMPT_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.", "there is a {} in the scene.",
    "there is the {} in the scene.", "this is a {} in the scene.", "this is the {} in the scene.",
    "this is one {} in the scene.",
)  # fmt: skip
"""CLIP-Surgery's 85 prompt templates, in their order (``clip/clip.py`` l. 255 of the authors' repository)."""

ROWS_PER_BATCH = 1024
"""Text-tower rows per forward (12 texts of 85 templates): bounded activation memory, few calls."""

MAX_MEMORY = 65536
"""Texts kept in memory (≈ 128 MiB of 512-wide float32 features); the least recently used go first."""


def default_cache_dir() -> Path:
    """grefine's cache folder: ``$GREFINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/grefine``, else
    ``~/.cache/grefine``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "grefine"


TextCache = Union[str, os.PathLike, None]
"""``"auto"``: the default folder (:func:`default_cache_dir`/``text-features``); a path: that
folder; None: memory only."""


def resolve_text_cache(text_cache: TextCache) -> Optional[Path]:
    """The folder of the disk cache that ``text_cache`` names (see :data:`TextCache`)."""
    if text_cache is None:
        return None
    if str(text_cache) == "auto":
        return default_cache_dir() / "text-features"
    return Path(text_cache).expanduser()


def tower_fingerprint(model: nn.Module, tokenizer) -> str:
    """SHA-256 of everything a text feature depends on besides the text: the model class and text
    pooling, every tensor of the text tower (names, dtypes, shapes and bytes) and the tokenizer's
    class and context length. Two towers with equal fingerprints give equal features."""
    tower = text_tower(model)
    digest = hashlib.sha256()
    for part in (type(model).__qualname__, getattr(model, "text_pool_type", ""), type(tokenizer).__qualname__):
        digest.update(f"{part}|".encode())
    digest.update(f"context {getattr(tokenizer, 'context_length', tower.context_length)}|".encode())
    tensors: dict[str, torch.Tensor] = {"positional_embedding": tower.positional_embedding}
    for name, module in (("token_embedding", tower.token_embedding), ("transformer", tower.transformer), ("ln_final", tower.ln_final)):
        tensors.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
    projection = tower.text_projection
    if isinstance(projection, nn.Module):
        tensors.update({f"text_projection.{key}": value for key, value in projection.state_dict().items()})
    elif projection is not None:
        tensors["text_projection"] = projection
    if tower.attn_mask is not None:
        tensors["attn_mask"] = tower.attn_mask
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def encoding_key(encoding: TextEncoding) -> str:
    """The disk-cache folder name of an encoding; an ensemble's names its templates' hash."""
    if encoding == "bare":
        return "bare"
    if encoding == "ensemble":
        return "ensemble-" + hashlib.sha256("\n".join(PROMPT_TEMPLATES).encode()).hexdigest()[:12]
    raise ValueError(f"text_encoding must be one of {', '.join(TEXT_ENCODINGS)}, got {encoding!r}")


class TextFeatures:
    """L2-normalised text features (K, D) of a CLIP text tower, each distinct text encoded once
    and cached in memory and (``cache_dir``) on disk; see the module docstring.

    Args:
        model: an open_clip model (its ``encode_text`` and text tower).
        tokenizer: its tokenizer.
        encoding: ``"ensemble"`` (the authors' 85 templates) or ``"bare"`` (the text alone).
        cache_dir: folder of the disk cache, or None for memory only.
        rows_per_batch: text-tower rows per forward.
        max_memory: texts kept in memory.

    ``encoded`` counts the texts encoded by the text tower, ``disk_hits`` those read from disk.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        encoding: TextEncoding = "ensemble",
        cache_dir: Optional[Path] = None,
        rows_per_batch: int = ROWS_PER_BATCH,
        max_memory: int = MAX_MEMORY,
    ) -> None:
        self.key = encoding_key(encoding)
        if rows_per_batch < 1 or max_memory < 1:
            raise ValueError(f"rows_per_batch and max_memory must be ≥ 1, got {rows_per_batch}, {max_memory}")
        self.model = model
        self.tokenizer = tokenizer
        self.encoding = encoding
        self.cache_dir = cache_dir
        self.rows_per_batch = rows_per_batch
        self.max_memory = max_memory
        self.encoded = 0
        self.disk_hits = 0
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._folder: Optional[Path] = None
        self._disk_failed = False

    @property
    def templates(self) -> tuple[str, ...]:
        return PROMPT_TEMPLATES if self.encoding == "ensemble" else ("{}",)

    @property
    def folder(self) -> Optional[Path]:
        """This tower's and encoding's disk-cache folder (the fingerprint is computed on first use)."""
        if self.cache_dir is None:
            return None
        if self._folder is None:
            self._folder = self.cache_dir / tower_fingerprint(self.model, self.tokenizer)[:32] / self.key
        return self._folder

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """The features of ``texts`` (K, D), float32 on the model's device, in order."""
        texts = list(texts)
        wanted = list(dict.fromkeys(texts))
        missing = [text for text in wanted if not self._remember(text)]
        missing = [text for text in missing if not self._load(text)]
        if missing:
            for text, feature in zip(missing, self.encode(missing)):
                self._store(text, feature)
        device = next(self.model.parameters()).device
        found = {text: self._memory[text] for text in wanted}
        return torch.stack([found[text] for text in texts]).to(device)

    def _remember(self, text: str) -> bool:
        if text in self._memory:
            self._memory.move_to_end(text)
            return True
        return False

    def _keep(self, text: str, feature: torch.Tensor) -> None:
        self._memory[text] = feature
        while len(self._memory) > self.max_memory:
            self._memory.popitem(last=False)

    def _path(self, text: str) -> Optional[Path]:
        folder = self.folder
        if folder is None or self._disk_failed:
            return None
        name = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return folder / name[:2] / f"{name}.npy"

    def _load(self, text: str) -> bool:
        path = self._path(text)
        if path is None or not path.is_file():
            return False
        try:
            feature = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return False  # damaged: recomputed and rewritten
        if feature.dtype != np.float32 or feature.ndim != 1 or not np.isfinite(feature).all():
            return False
        self._keep(text, torch.from_numpy(feature))
        self.disk_hits += 1
        return True

    def _store(self, text: str, feature: torch.Tensor) -> None:
        self._keep(text, feature)
        path = self._path(text)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
                np.save(handle, feature.numpy(), allow_pickle=False)
            os.replace(handle.name, path)
        except OSError as err:
            self._disk_failed = True
            warnings.warn(f"text-feature cache {self.cache_dir} cannot be written ({err}); keeping features in memory only.", stacklevel=3)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Features of ``texts`` (K, D) computed by the text tower, no cache read or written:
        float32 on the CPU, each template row L2-normalised, then (ensemble) averaged per text and
        L2-normalised again."""
        templates = self.templates
        rows = [template.format(text) for text in texts for template in templates]
        self._warn_truncated(texts)
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(rows), self.rows_per_batch):
            tokens = self.tokenizer(rows[start:start + self.rows_per_batch]).to(device)
            chunks.append(F.normalize(self._encode_rows(tokens).float(), dim=-1).cpu())
        features = torch.cat(chunks).view(len(texts), len(templates), -1)
        self.encoded += len(texts)
        return F.normalize(features.mean(dim=1), dim=-1) if len(templates) > 1 else features[:, 0]

    def _encode_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected features of tokenised rows (N, context): ``model.encode_text``, computed over
        the rows' own length when the tower is causal and pools at the end-of-text token (the
        largest token id, open_clip's ``argmax`` pooling)."""
        tower = text_tower(self.model)
        if tower.attn_mask is None or getattr(self.model, "text_pool_type", None) != "argmax":
            return self.model.encode_text(tokens)
        end = tokens.argmax(dim=-1)
        return encode_text_embeddings(self.model, tower.token_embedding(tokens[:, : int(end.max()) + 1]), end)

    def _warn_truncated(self, texts: Sequence[str]) -> None:
        """Warn for each text whose longest template row exceeds the tokenizer's context (the row
        is truncated). CLIP's BPE splits words and punctuation apart, so a row has the text's
        tokens plus its template's own."""
        encode = getattr(self.tokenizer, "encode", None)
        if not callable(encode):
            return
        context = int(getattr(self.tokenizer, "context_length", 77))
        overhead = max(len(encode(template.format(""))) for template in self.templates) + 2  # + start and end tokens
        for text in texts:
            count = len(encode(text)) + overhead
            if count > context:
                warnings.warn(
                    f"text of {count} tokens (with its template) is longer than CLIP's {context}-token context and is "
                    f"truncated for its alignment score: {text[:60]!r}...",
                    stacklevel=4,
                )
