"""Image features for learning PQ-Map's prompts, computed once per image (paper §4.2: the
image encoder is frozen as CLIP-Surgery; only the text side is updated).

PQ-Map's score p of a factor is read at the CLS token of the VVV-surgery tower (Eq. 3,
:mod:`grefine.maps.pq_map`), so an image contributes one feature: token 0 of
:meth:`~grefine.maps.clip_surgery.VVVSurgery.forward_tokens`, normalised as PQ-Map normalises it
(``feature_norm``, :func:`~grefine.maps.clip_surgery.normalize_tokens`: by default each channel
over the image's tokens, as the authors' script), after PQ-Map's own pre-processing
(bicubic resize to the input size, no crop; :func:`grefine.image_io.to_clip_tensor`). The tower
is frozen and this input is deterministic, so caching the features is exact: training then
costs one text-tower pass per step. The one augmentation offered, pyiqa's horizontal flip, has
two outcomes; both views are cached (``views`` = 2) and the trainer picks one per sample, which
is the same as flipping on the fly. (pyiqa's random crop is not offered: PQ-Map scores the
whole resized image, never a crop.)

Under ``accelerate launch`` every process encodes a round-robin share of the images and the
shares are gathered, so every process ends with all features.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from grefine.image_io import load_image, to_clip_tensor
from grefine.maps.clip_surgery import FeatureNorm, InputSize, VVVSurgery, normalize_tokens


@dataclass
class ImageFeatures:
    """``features``: (n_kept, views, embed_dim) float32 on the CPU, row i for ``kept[i]``
    (an index into the input paths); ``unreadable``: (index, error) of the images left out."""

    features: torch.Tensor
    kept: list[int]
    unreadable: list[tuple[int, str]]


def _views(path: Path, surgery: VVVSurgery, input_size: InputSize, hflip: bool) -> torch.Tensor:
    image = load_image(path)
    size = surgery.input_size(image.size, input_size)
    images: list[Image.Image] = [image, ImageOps.mirror(image)] if hflip else [image]
    return to_clip_tensor(images, size, surgery.image_mean, surgery.image_std)


def _encode_chunk(
    surgery: VVVSurgery, tensors: Sequence[torch.Tensor], device: torch.device, feature_norm: FeatureNorm
) -> list[torch.Tensor]:
    """CLS features (views, embed_dim) of each image; images of one input size share a forward."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape), []).append(position)
    out: list[Optional[torch.Tensor]] = [None] * len(tensors)
    for positions in groups.values():
        batch = torch.cat([tensors[p] for p in positions]).to(device)
        cls = torch.stack([normalize_tokens(tokens, feature_norm)[0] for tokens in surgery.forward_tokens(batch)]).cpu()
        for position, features in zip(positions, cls.view(len(positions), -1, cls.shape[-1])):
            out[position] = features
    return out  # type: ignore[return-value]


@torch.no_grad()
def encode_images(
    surgery: VVVSurgery,
    paths: Sequence[Path],
    *,
    input_size: InputSize = None,
    hflip: bool = False,
    batch_size: int = 32,
    workers: int = 4,
    accelerator=None,
    progress: bool = True,
    feature_norm: FeatureNorm = "tokens",
) -> ImageFeatures:
    """Cache the normalised CLS feature of every image (and of its mirror when ``hflip``), each
    view's tokens normalised by ``feature_norm`` as :class:`~grefine.maps.pq_map.PQMap` does.

    Images that cannot be read are left out and reported, never fatal. Decoding and resizing
    run on ``workers`` threads; the tower runs in batches of ``batch_size`` images.
    """
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    device = accelerator.device if accelerator is not None else next(surgery.parameters()).device
    mine = list(range(rank, len(paths), world))
    encoded: list[tuple[int, torch.Tensor]] = []
    failed: list[tuple[int, str]] = []
    bar = tqdm(total=len(mine), desc="image features", unit="img", disable=not progress or rank != 0)

    def prepare(index: int) -> tuple[int, object]:
        try:
            return index, _views(paths[index], surgery, input_size, hflip)
        except (ValueError, OSError) as err:  # ImageLoadError is a ValueError
            return index, str(err)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(mine), batch_size):
            prepared = list(pool.map(prepare, mine[start:start + batch_size]))
            good = [(i, t) for i, t in prepared if isinstance(t, torch.Tensor)]
            failed += [(i, t) for i, t in prepared if not isinstance(t, torch.Tensor)]  # type: ignore[misc]
            features = _encode_chunk(surgery, [t for _, t in good], device, feature_norm) if good else []
            encoded += [(i, f) for (i, _), f in zip(good, features)]
            bar.update(len(prepared))
    bar.close()
    if world > 1:
        from accelerate.utils import gather_object

        encoded, failed = gather_object(encoded), gather_object(failed)
    encoded.sort(key=lambda pair: pair[0])
    views = 2 if hflip else 1
    stacked = torch.stack([f for _, f in encoded]) if encoded else torch.empty(0, views, 0)
    return ImageFeatures(features=stacked, kept=[i for i, _ in encoded], unreadable=sorted(failed))
