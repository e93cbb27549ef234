"""Stage 2's optional caption, as PASD's ``test_pasd.py`` writes its prompt (paper §3.3, Eq. 10).

``test_pasd.py`` (yangxy/PASD; its default ``--high_level_info caption`` without ``--use_blip``)
captions the image it restores with open_clip's CoCa ViT-L/14
(``coca_ViT-L-14`` / ``mscoco_finetuned_laion2B-s13B-b90k``): ``model.generate(transform(image))``
decoded up to ``<end_of_text>``, "blurry" replaced by "clear" and "noisy" by "clean"; its
prompt is then ``f"{caption} {prompt}"`` (the caption alone without a prompt) followed by the
added prompt ``"clean, high-resolution, 8k"`` with no separator (:func:`pasd_prompt`).

open_clip's ``CoCa.generate`` needs ``transformers.BeamSearchScorer``, which transformers 5
removed, so :func:`caption_tokens` runs the same search itself: ``generate``'s defaults
(beam search, 6 beams in 3 groups of 2, at most 30 tokens, no end-of-text before 5 tokens,
repetition penalty 1) through open_clip's ``CoCa._generate_beamsearch`` loop, with the
bookkeeping of transformers 4.x's ``BeamSearchScorer`` / ``BeamHypotheses`` (length penalty 1,
no early stopping): the beams of a group extend by the ``2·group`` best (raw logit sums, as
open_clip scores them), an end-of-text among a group's best ``group`` candidates closes a
hypothesis scored ``sum / length``, a group is done when it holds ``group`` hypotheses none of
which its best open candidate can beat, and the best hypothesis of all groups is the caption.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from PIL import Image

from grefine.errors import MissingWeightsError

CAPTION_MODEL = "coca_ViT-L-14"
CAPTION_PRETRAINED = "mscoco_finetuned_laion2B-s13B-b90k"
SOT_TOKEN = 49406
EOT_TOKEN = 49407


@dataclass
class _Hypotheses:
    """Finished hypotheses of one beam group (transformers 4.x's ``BeamHypotheses``, length penalty 1)."""

    size: int
    beams: list[tuple[float, list[int]]] = field(default_factory=list)
    worst_score: float = 1e9

    def add(self, tokens: list[int], score_sum: float, length: int) -> None:
        score = score_sum / length
        if len(self.beams) < self.size or score > self.worst_score:
            self.beams.append((score, tokens))
            if len(self.beams) > self.size:
                ranked = sorted((s, index) for index, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_open_sum: float, length: int) -> bool:
        return len(self.beams) >= self.size and self.worst_score >= best_open_sum / length


@torch.no_grad()
def caption_tokens(
    model: nn.Module,
    image: torch.Tensor,
    *,
    seq_len: int = 30,
    num_beams: int = 6,
    num_beam_groups: int = 3,
    min_seq_len: int = 5,
) -> list[int]:
    """The caption tokens (start-of-text first) of one pre-processed image (1, 3, H, W) by an
    open_clip ``CoCa``, with ``CoCa.generate``'s default beam search (module docstring)."""
    group = num_beams // num_beam_groups
    pad = int(getattr(model, "pad_id", 0))
    images = image.repeat_interleave(num_beams, dim=0)
    image_latent, image_embs = model._encode_image(images)
    ids = torch.full((num_beams, 1), SOT_TOKEN, dtype=torch.long, device=image.device)
    scores = torch.full((num_beams,), -1e9, dtype=torch.float32, device=image.device)
    scores[::group] = 0.0  # one live beam per group at the start
    finished = [_Hypotheses(group) for _ in range(num_beam_groups)]
    done = [False] * num_beam_groups
    while True:
        logits = model(images, ids, image_latent=image_latent, image_embs=image_embs, output_labels=False)["logits"]
        logits = logits[:, -1, :].float()
        next_tokens = torch.zeros(num_beams, dtype=torch.long, device=ids.device)
        for g in range(num_beam_groups):
            rows = slice(g * group, (g + 1) * group)
            group_ids = ids[rows]
            candidates = logits[rows].clone()
            if group_ids.shape[-1] < min_seq_len:
                candidates[:, EOT_TOKEN] = -float("inf")
            candidates = (candidates + scores[rows, None]).view(-1)
            top_scores, top = torch.topk(candidates, 2 * group)
            beam_of, token_of = top // logits.shape[-1], top % logits.shape[-1]
            new_scores, new_tokens, new_beams = _step_group(
                finished[g], done[g], group_ids, top_scores, token_of, beam_of, pad
            )
            done[g] = done[g] or finished[g].is_done(float(top_scores.max()), group_ids.shape[-1] + 1)
            scores[rows] = new_scores
            ids[rows] = group_ids[new_beams]
            next_tokens[rows] = new_tokens
        ids = torch.cat([ids, next_tokens[:, None]], dim=-1)
        if all(done) or ids.shape[-1] >= seq_len:
            break
    for g in range(num_beam_groups):
        if not done[g]:
            for row in range(g * group, (g + 1) * group):
                finished[g].add(ids[row].tolist(), float(scores[row]), ids.shape[-1])
    best = sorted((beam for hypotheses in finished for beam in hypotheses.beams), key=lambda beam: beam[0])[-1][1]
    return best


def _step_group(
    finished: _Hypotheses,
    done: bool,
    group_ids: torch.Tensor,
    top_scores: torch.Tensor,
    token_of: torch.Tensor,
    beam_of: torch.Tensor,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One group's step (``BeamSearchScorer.process``): the new beam scores, tokens and source
    beams; end-of-text candidates ranked within the group's size close hypotheses."""
    size = group_ids.shape[0]
    device = group_ids.device
    if done:
        return torch.zeros(size, device=device), torch.full((size,), pad, dtype=torch.long, device=device), torch.zeros(size, dtype=torch.long, device=device)
    new_scores, new_tokens, new_beams = [], [], []
    for rank, (score, token, beam) in enumerate(zip(top_scores.tolist(), token_of.tolist(), beam_of.tolist())):
        if token == EOT_TOKEN:
            if rank < size:
                finished.add(group_ids[beam].tolist(), score, group_ids.shape[-1] + 1)
        else:
            new_scores.append(score)
            new_tokens.append(token)
            new_beams.append(beam)
        if len(new_scores) == size:
            break
    return (
        torch.tensor(new_scores, dtype=torch.float32, device=device),
        torch.tensor(new_tokens, dtype=torch.long, device=device),
        torch.tensor(new_beams, dtype=torch.long, device=device),
    )


def decode_caption(tokens: list[int]) -> str:
    """``test_pasd.py``'s caption text: open_clip's decoding up to ``<end_of_text>``, without
    ``<start_of_text>``, "blurry" → "clear" and "noisy" → "clean"."""
    import open_clip

    text = open_clip.decode(torch.tensor(tokens)).split("<end_of_text>")[0].replace("<start_of_text>", "")
    return text.replace("blurry", "clear").replace("noisy", "clean")


def caption_transform(model: nn.Module):
    """open_clip's evaluation transform of ``model`` (for the CoCa checkpoint: shortest side to
    224 bicubic, centre crop, CLIP's mean and std), as ``create_model_and_transforms`` returns it."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    config = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    config.setdefault("size", model.visual.image_size)
    return image_transform_v2(PreprocessCfg(**config), is_train=False)


def caption_image(model: nn.Module, image: Image.Image, device: torch.device) -> str:
    """``test_pasd.py``'s caption of ``image`` by the CoCa ``model`` (in its own dtype, on ``device``)."""
    dtype = next(model.parameters()).dtype
    pixels = caption_transform(model)(image.convert("RGB"))[None].to(device=device, dtype=dtype)
    return decode_caption(caption_tokens(model, pixels))


def pasd_prompt(prompt: str, added_prompt: str, caption: Optional[str] = None) -> str:
    """``test_pasd.py``'s prompt: ``f"{caption} {prompt}"`` (the caption alone when the prompt is
    empty) + ``added_prompt`` with no separator; without a caption, ``f"{prompt}, "`` +
    ``added_prompt`` (``added_prompt`` alone when the prompt is empty)."""
    prompt = prompt.strip()
    if caption is not None:
        return (f"{caption} {prompt}" if prompt else caption) + added_prompt
    return (f"{prompt}, " if prompt else "") + added_prompt


def load_caption_model(
    model_name: str = CAPTION_MODEL,
    pretrained: str = CAPTION_PRETRAINED,
    *,
    dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """open_clip's CoCa with its weights, in eval mode (and ``dtype``), on the CPU; missing weights
    raise :class:`~grefine.errors.MissingWeightsError` naming the model and the config key."""
    import open_clip

    try:
        model = open_clip.create_model(model_name, pretrained=pretrained)
    except Exception as err:  # open_clip raises RuntimeError/OSError/HF errors depending on the source
        raise MissingWeightsError.for_source(
            f"the stage-2 caption model {model_name} (config keys stage2.caption_model / caption_pretrained)", pretrained, err
        ) from err
    if not hasattr(model, "_encode_image") or not hasattr(model, "text_decoder"):
        raise ValueError(f"stage2.caption_model {model_name!r} is not a CoCa model (open_clip coca_*); use {CAPTION_MODEL}.")
    return model.eval().to(dtype=dtype) if dtype is not None else model.eval()
