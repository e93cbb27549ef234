#!/usr/bin/env python
"""Learn one PQ-Map quality-prompt pair (paper §3.1, Eq. 2-3; §4.2) from human scores.

    python scripts/train_pq_map.py --data LABELS.csv|.xlsx --image-root DIR --factor overall \\
        --score-column mos --output DIR [--model ViT-B-16 --pretrained openai | --tiny-random] \\
        [--val-split 0.2 | --val VAL.csv] [--epochs 50] [--batch-size 8] [--lr 2e-3] [--seed 0] \\
        [--init text|PQ-overall.pth] [--resume]

The image tower is frozen and run through PQ-Map's VVV surgery; the CLS feature of every image
is computed once and cached (exact: the tower is frozen and the input deterministic; with
--hflip both views are cached), so an epoch costs only text-tower passes. Only the 2x16 context
tokens of the (positive, negative) pair are learned, with pyiqa's CLIP-IQA+ objective (MSE +
PLCC loss on scores min-max normalised to [0, 1]; Adam, cosine schedule).

Writes into --output: PQ-<factor>.pth (the epoch with the best validation SRCC, in the official
format: drop it into checkpoints/pq_embeddings/), train_log.csv (epoch 0 = the initial prompts)
and train_log.png, checkpoint.pt (the latest epoch: --resume continues from it) and
skipped_rows.csv when rows were left out (no numeric score, missing or unreadable image).
Several GPUs: accelerate launch scripts/train_pq_map.py ...
Exit status: 0 when trained, 2 when a bad argument or input stopped it before training.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grefine.eval.correlation import MIN_LOGISTIC_PAIRS  # noqa: E402
from grefine.errors import MissingWeightsError  # noqa: E402
from grefine.maps.pq_map import (  # noqa: E402
    QUALITY_FACTORS,
    QualityEmbeddingError,
    load_embedding_params,
)
from grefine.train import (  # noqa: E402
    DEFAULT_CLASS_TEXTS,
    QualityPromptLearner,
    ResumeError,
    TrainConfig,
    TrainingDataError,
    prepare_training_data,
    train_pq_prompts,
)
from grefine.train.pq_prompts import CTX_KEY, class_text_problem  # noqa: E402
from grefine.train.trainer import SKIPPED_NAME, check_output, make_accelerator  # noqa: E402

TINY_TEXT_WIDTH = 512  # grefine.tiny.build_tiny_pq_clip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="label table (.csv or .xlsx) with an image column and a score column")
    parser.add_argument("--image-root", type=Path, required=True, help="folder the table's image names are relative to")
    parser.add_argument("--factor", required=True, choices=QUALITY_FACTORS, help="which PQ-Map prompt pair to learn")
    parser.add_argument("--score-column", required=True, help="column of the human scores (higher = better)")
    parser.add_argument("--image-column", default=None, help="column of the image names (default: the first of image, name, filename, ...)")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val-split", type=float, default=0.2, help="seeded random fraction of --data held out for validation (default 0.2)")
    split.add_argument("--val", type=Path, default=None, help="a separate validation table (same columns, same --image-root)")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model (default ViT-B-16, the authors' CS-ViT-B/16)")
    parser.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or checkpoint file")
    parser.add_argument("--tiny-random", action="store_true", help="a tiny random CLIP on the CPU (smoke test; learns noise-level features)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs (default 50, paper §4.2)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step and process (default 8, pyiqa's CLIP-IQA+ recipe)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, cosine-annealed to 0 (default 2e-3, pyiqa's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the shuffling and the flips")
    parser.add_argument("--init", default="text", help="'text' (pyiqa: X-token context around the class texts) or a PQ-*.pth to fine-tune")
    parser.add_argument("--class-text", nargs=2, default=list(DEFAULT_CLASS_TEXTS), metavar=("POSITIVE", "NEGATIVE"), help="class texts for --init text (default: 'Good photo.' 'Bad photo.')")
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips (pyiqa's hflip; both views are cached)")
    parser.add_argument("--score-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="min-max normalisation range (default: the training scores' min and max)")
    parser.add_argument("--input-size", default=None, help="CLIP input side (int) or 'native'; default: the model's, as PQ-Map")
    parser.add_argument("--num-blocks", type=int, default=6, help="VVV blocks of the PQ-Map that reads the prompts (default 6, as PQ-Map)")
    parser.add_argument("--feature-norm", default="tokens", choices=["tokens", "channels"], help="its image-token normalisation (default tokens, as PQ-Map)")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding images while features are cached")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


class UsageError(ValueError):
    """A bad argument, found before any model is loaded."""


def _input_size(value: str | None):
    if value is None or value == "native":
        return value
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"--input-size must be a positive integer or 'native', got {value!r}")
    return int(value)


def _tokenizer_and_width(args: argparse.Namespace):
    """The tokenizer and token width of the requested CLIP, without loading its weights."""
    if args.tiny_random:
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(), TINY_TEXT_WIDTH
    import open_clip

    config = open_clip.get_model_config(args.model)
    if config is None:
        raise UsageError(f"--model {args.model}: not an open_clip model name (see open_clip.list_models()).")
    layers = config["vision_cfg"].get("layers")
    if isinstance(layers, int) and args.num_blocks > layers:
        raise UsageError(f"--num-blocks {args.num_blocks}: {args.model}'s image tower has {layers} blocks.")
    try:
        tokenizer = open_clip.get_tokenizer(args.model)
    except Exception as err:  # hub tokenizers fail offline with several error types
        raise UsageError(f"--model {args.model}: its tokenizer cannot be loaded ({type(err).__name__}: {err}).") from err
    return tokenizer, config["text_cfg"]["width"]


def check_args(args: argparse.Namespace) -> tuple[TrainConfig, object]:
    """Every check that needs no model: returns the config and the tokenizer."""
    config = TrainConfig(
        factor=args.factor, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        hflip=args.hflip, score_range=tuple(args.score_range) if args.score_range else None,
    )
    config.check()
    check_output(args.output, args.resume)
    args.input_size = _input_size(args.input_size)
    if args.num_blocks < 1:
        raise UsageError(f"--num-blocks must be at least 1, got {args.num_blocks}.")
    tokenizer, width = _tokenizer_and_width(args)
    if args.init == "text":
        problem = class_text_problem(tokenizer, args.class_text)
        if problem:
            raise UsageError(f"--class-text: {problem}")
    else:
        init_width = load_embedding_params(args.init)[CTX_KEY].shape[-1]
        if init_width != width:
            raise UsageError(f"--init {args.init}: prompts of width {init_width}, but {args.model}'s text tower has width {width}.")
    return config, tokenizer


def build_learner(args: argparse.Namespace, model, tokenizer) -> QualityPromptLearner:
    if args.init == "text":
        return QualityPromptLearner.from_text_pair(model, tokenizer, args.class_text)
    return QualityPromptLearner.from_file(args.init)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config, tokenizer = check_args(args)
        data = prepare_training_data(
            args.data, args.image_root, args.score_column, image_column=args.image_column,
            val=args.val, val_split=args.val_split, seed=args.seed,
        )
    except (UsageError, ResumeError, TrainingDataError, QualityEmbeddingError, ValueError) as err:
        print(f"train_pq_map: {err}", file=sys.stderr)
        return 2
    accelerator = make_accelerator(args.seed)
    if len(data.val) < MIN_LOGISTIC_PAIRS and accelerator.is_main_process:
        print(
            f"train_pq_map: note: the validation split has {len(data.val)} images, too few for the {MIN_LOGISTIC_PAIRS}-parameter "
            "logistic fit behind val_plcc: val_plcc stays empty (nan); val_srcc still picks the best epoch.",
            file=sys.stderr,
        )
    try:
        if args.tiny_random:
            from grefine.tiny import build_tiny_pq_clip

            model, _ = build_tiny_pq_clip(seed=args.seed)
        else:
            from grefine.maps.pq_map import load_open_clip

            model, _ = load_open_clip(args.model, args.pretrained, device=accelerator.device, precision="fp32")
        description = {"model": "tiny-random" if args.tiny_random else f"{args.model}/{args.pretrained}", "init": args.init,
                       "class_text": list(args.class_text)}
        result = train_pq_prompts(
            model, build_learner(args, model, tokenizer), data, args.output, config,
            input_size=args.input_size, accelerator=accelerator, resume=args.resume, description=description,
            progress=not args.no_progress, workers=args.workers,
            num_blocks=min(args.num_blocks, 3) if args.tiny_random else args.num_blocks, feature_norm=args.feature_norm,
        )
    except (MissingWeightsError, ResumeError, TrainingDataError, QualityEmbeddingError) as err:
        print(f"train_pq_map: {err}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        skipped = f"{len(result.skipped)} rows skipped (see {args.output / SKIPPED_NAME})" if result.skipped else "no rows skipped"
        resumed = f", resumed after epoch {result.resumed_after}" if result.resumed_after is not None else ""
        print(
            f"train_pq_map: {result.train_size} train / {result.val_size} val images, {skipped}{resumed}; best epoch "
            f"{result.best_epoch} (val SRCC {result.best_val_srcc:.4f}) -> {result.prompts_path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
