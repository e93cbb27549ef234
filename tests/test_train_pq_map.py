"""Learning PQ-Map's prompts (grefine.train, scripts/train_pq_map.py) with a tiny random CLIP.

The synthetic database: crops of scikit-image's photos, each blurred by known amounts; the
score falls with the blur (sharper = better). A tiny random image tower does not generalise
to held-out photos (a linear probe on its features gives held-out SRCC anywhere from 0 to
0.5), so only the fit to the training set is asserted; held-out quality needs real weights.
The fit uses full-batch steps (batch size above the 77 training images): pyiqa's PLCC loss
over batches of 8 is too noisy a gradient for a few dozen steps on this tiny problem.
"""
from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from grefine.image_io import load_image
from grefine.maps.pq_map import (
    EOT_POSITION,
    PQMap,
    QualityPrompts,
    load_embedding_file,
    quality_direction,
)
from grefine.tiny import build_tiny_pq_clip
from grefine.train import (
    QualityPromptLearner,
    TrainConfig,
    TrainingDataError,
    clipiqa_plus_loss,
    prepare_training_data,
    train_pq_prompts,
)
from grefine.train import trainer as trainer_module
from grefine.train.log import LOG_COLUMNS
from grefine.train.pq_prompts import class_text_problem
from grefine.train.trainer import CHECKPOINT_NAME, srcc_plcc
from tests.conftest import REPO

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
BLURS = (0.0, 0.6, 1.2, 1.8, 2.4, 3.0)
SIDE = 64
INPUT_SIZE = 64  # the tiny tower at 64², so that its 8×8 patch grid sees the blur


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def blur_db(tmp_path_factory):
    """96 images (4 photos × 4 crops × 6 blurs) and ``labels.csv`` (image, mos = 5 − σ)."""
    import skimage.data

    root = tmp_path_factory.mktemp("blur_db")
    rows = []
    for photo in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, photo)())
        width, height = image.size
        side = min(width, height) // 2
        for k, (cx, cy) in enumerate([(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7)]):
            left, top = int(cx * width - side / 2), int(cy * height - side / 2)
            crop = image.crop((left, top, left + side, top + side)).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
            for sigma in BLURS:
                name = f"{photo}_{k}_{sigma}.png"
                (crop.filter(ImageFilter.GaussianBlur(sigma)) if sigma else crop).save(root / name)
                rows.append({"image": name, "mos": f"{5.0 - sigma}"})
    _write_csv(root / "labels.csv", rows)
    return root


def _write_csv(path, rows, columns=("image", "mos")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def tiny_clip():
    """One tiny CLIP for the module (its towers are frozen: training never changes it)."""
    return build_tiny_pq_clip()


def _run(blur_db, tiny_clip, output, *, epochs, lr=2e-3, resume=False):
    data = prepare_training_data(blur_db / "labels.csv", blur_db, "mos", val_split=0.2, seed=0)
    model, tokenizer = tiny_clip
    learner = QualityPromptLearner.from_text_pair(model, tokenizer)
    config = TrainConfig(factor="technical", epochs=epochs, lr=lr, batch_size=128)
    return train_pq_prompts(model, learner, data, output, config, input_size=INPUT_SIZE, resume=resume, progress=False, num_blocks=2)


EPOCHS = 60


@pytest.fixture(scope="module")
def trained(blur_db, tiny_clip, tmp_path_factory):
    output = tmp_path_factory.mktemp("trained")
    return output, _run(blur_db, tiny_clip, output, epochs=EPOCHS)


def test_training_fits_the_blur_scores_of_the_training_set(trained):
    _, result = trained
    first, last = result.history[0], result.history[-1]
    assert [r.epoch for r in result.history] == list(range(EPOCHS + 1))
    assert last.loss < 0.8 * first.loss
    assert last.train_srcc > first.train_srcc + 0.2, [round(r.train_srcc, 3) for r in result.history]
    assert result.train_size == 77 and result.val_size == 19 and not result.skipped


def test_log_plot_and_best_epoch_are_written(trained):
    output, result = trained
    with open(output / "train_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS + 1))
    assert rows[0]["step_loss"] == "" and rows[0]["lr"] == ""  # epoch 0: before any update
    assert float(rows[1]["lr"]) == pytest.approx(2e-3) and float(rows[-1]["lr"]) < 1e-5  # cosine to 0
    val_srcc = [float(r["val_srcc"]) for r in rows]
    assert result.best_epoch == int(np.nanargmax(val_srcc)) and result.best_val_srcc == pytest.approx(max(val_srcc), abs=1e-5)
    assert Image.open(output / "train_log.png").format == "PNG"


def test_saved_prompts_are_the_best_epoch_in_the_official_format(trained, blur_db, tiny_clip, pq_embeddings_dir):
    output, result = trained
    saved = torch.load(output / "PQ-technical.pth", weights_only=True)
    official = torch.load(pq_embeddings_dir / "PQ-technical.pth", weights_only=True)
    assert list(saved) == ["params"] and list(saved["params"]) == list(official["params"])
    for key, value in saved["params"].items():
        assert value.dtype == torch.float32 and value.shape == official["params"][key].shape
    size = (output / "PQ-technical.pth").stat().st_size
    assert abs(size - (pq_embeddings_dir / "PQ-technical.pth").stat().st_size) < 0.01 * size  # no oversized storages
    # PQ-Map reading the file scores the validation images as the trainer did at the best epoch.
    data = prepare_training_data(blur_db / "labels.csv", blur_db, "mos", val_split=0.2, seed=0)
    model, tokenizer = tiny_clip
    pair = load_embedding_file(output / "PQ-technical.pth")
    prompts = QualityPrompts(pair.expand(4, 2, -1, -1), torch.full((4, 2), EOT_POSITION), "trained")
    pq = PQMap(model, tokenizer, prompts, num_blocks=2, input_size=INPUT_SIZE)
    scores = [r.factor_scores["technical"] for r in pq([load_image(item.path) for item in data.val])]
    srcc, plcc = srcc_plcc(scores, [item.score for item in data.val])
    best = result.history[result.best_epoch]
    assert srcc == pytest.approx(best.val_srcc, abs=1e-6) and plcc == pytest.approx(best.val_plcc, abs=1e-5)


def test_file_round_trip_gives_the_in_memory_scores(blur_db, tiny_clip, tmp_path):
    from grefine.maps.clip_surgery import vvv_surgery
    from grefine.train.features import encode_images

    model, tokenizer = tiny_clip
    learner = QualityPromptLearner.from_text_pair(model, tokenizer)
    with torch.no_grad():
        learner.ctx.add_(0.3 * torch.randn_like(learner.ctx))  # any learned state
    paths = sorted(blur_db.glob("*.png"))[:6]
    features = encode_images(vvv_surgery(model, num_blocks=2), paths, input_size=INPUT_SIZE, progress=False).features
    with torch.no_grad():
        in_memory = torch.sigmoid(features[:, 0] @ learner(model))
    learner.save(tmp_path / "PQ-overall.pth")
    reloaded = QualityPromptLearner.from_file(tmp_path / "PQ-overall.pth")
    assert torch.equal(reloaded.embeddings(), learner.embeddings())
    pair = load_embedding_file(tmp_path / "PQ-overall.pth")
    prompts = QualityPrompts(pair.expand(4, 2, -1, -1), torch.full((4, 2), EOT_POSITION), "saved")
    pq = PQMap(model, tokenizer, prompts, num_blocks=2, input_size=INPUT_SIZE)
    from_file = torch.tensor([r.factor_scores["overall"] for r in pq([load_image(p) for p in paths])])
    assert torch.allclose(from_file, in_memory, atol=1e-5)


def test_resume_continues_from_the_saved_epoch(blur_db, tiny_clip, tmp_path, monkeypatch):
    reference = _run(blur_db, tiny_clip, tmp_path / "straight", epochs=3)
    original = trainer_module.PromptTrainer._train_epoch
    ran: list[int] = []

    def crash_at_epoch_3(self, epoch):
        ran.append(epoch)
        if epoch == 3 and ran.count(3) == 1:
            raise KeyboardInterrupt  # killed during epoch 3
        return original(self, epoch)

    monkeypatch.setattr(trainer_module.PromptTrainer, "_train_epoch", crash_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        _run(blur_db, tiny_clip, tmp_path / "cut", epochs=3)
    assert torch.load(tmp_path / "cut" / CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
    with pytest.raises(trainer_module.ResumeError, match="--resume"):
        _run(blur_db, tiny_clip, tmp_path / "cut", epochs=3)  # a fresh run must not overwrite it
    resumed = _run(blur_db, tiny_clip, tmp_path / "cut", epochs=3, resume=True)
    assert resumed.resumed_after == 2 and ran == [1, 2, 3, 3]
    for a, b in zip(resumed.history, reference.history):
        assert (a.epoch, a.loss, a.train_srcc, a.val_srcc) == pytest.approx((b.epoch, b.loss, b.train_srcc, b.val_srcc), abs=1e-6)
    saved = torch.load(tmp_path / "cut" / "PQ-technical.pth", weights_only=True)["params"]
    expected = torch.load(tmp_path / "straight" / "PQ-technical.pth", weights_only=True)["params"]
    assert all(torch.allclose(saved[k], expected[k], atol=1e-6) for k in saved)
    with pytest.raises(trainer_module.ResumeError, match="lr"):
        _run(blur_db, tiny_clip, tmp_path / "cut", epochs=3, lr=1e-3, resume=True)


def test_text_initialisation_follows_pyiqa(tiny_clip):
    model, tokenizer = tiny_clip
    learner = QualityPromptLearner.from_text_pair(model, tokenizer, ("Good photo.", "Bad photo."))
    table = model.token_embedding.weight
    tokens = tokenizer(["Good photo..", "Bad photo.."])
    x = tokenizer(["X"])[0, 1]
    assert torch.equal(learner.token_prefix[:, 0], table[[49406, 49406]])
    assert torch.equal(learner.ctx, table[x].expand(2, 16, -1))
    assert torch.equal(learner.token_suffix[:, :4], table[tokens[:, 1:5]])  # good|bad, photo, '..', EOT
    assert torch.equal(learner.token_suffix[0, 1:], learner.token_suffix[1, 1:])  # as in the official files
    assert learner.embeddings().shape == (2, 77, 512)
    assert class_text_problem(tokenizer, ("A very good photo.", "Bad photo.")) is not None
    with pytest.raises(ValueError, match="3"):
        QualityPromptLearner.from_text_pair(model, tokenizer, ("Good", "Bad photo."))


def test_fine_tuning_starts_from_the_official_file(tiny_clip, pq_embeddings_dir):
    learner = QualityPromptLearner.from_file(pq_embeddings_dir / "PQ-natural.pth")
    assert torch.equal(learner.embeddings(), load_embedding_file(pq_embeddings_dir / "PQ-natural.pth"))
    model, _ = tiny_clip
    with torch.no_grad():  # the shortened (causal) pass equals PQ-Map's full 77-token pass
        full = quality_direction(model, learner.embeddings(), torch.full((2,), EOT_POSITION))
        assert torch.allclose(learner(model), full, atol=1e-5)


def test_objective_is_pyiqas_mse_plus_plcc_loss():
    from pyiqa.losses.iqa_losses import PLCCLoss
    from pyiqa.losses.losses import MSELoss

    generator = torch.Generator().manual_seed(0)
    for size in (8, 1):
        pred, target = torch.rand(size, 1, generator=generator), torch.rand(size, 1, generator=generator)
        expected = MSELoss(loss_weight=1.0)(pred, target) + PLCCLoss(loss_weight=1.0)(pred, target)
        assert torch.allclose(clipiqa_plus_loss(pred[:, 0], target[:, 0]), expected)


def _script():
    spec = importlib.util.spec_from_file_location("train_pq_map_script", REPO / "scripts" / "train_pq_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cli(blur_db, output, *extra):
    return [
        "--data", str(blur_db / "labels.csv"), "--image-root", str(blur_db), "--factor", "overall",
        "--score-column", "mos", "--output", str(output), "--tiny-random", "--no-progress", *extra,
    ]


def test_cli_skips_and_counts_unreadable_rows(blur_db, tmp_path, capsys):
    rows = list(csv.DictReader(open(blur_db / "labels.csv", newline="")))[:30]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows += [{"image": "broken.png", "mos": "3"}, {"image": "gone.png", "mos": "2"}, {"image": rows[0]["image"], "mos": "n/a"}]
    for row in rows[:30]:
        (tmp_path / row["image"]).write_bytes((blur_db / row["image"]).read_bytes())
    _write_csv(tmp_path / "labels.csv", rows)
    argv = _cli(blur_db, tmp_path / "out", "--epochs", "1")
    argv[1], argv[3] = str(tmp_path / "labels.csv"), str(tmp_path)
    assert _script().main(argv) == 0
    assert "3 rows skipped" in capsys.readouterr().out
    skipped = list(csv.DictReader(open(tmp_path / "out" / "skipped_rows.csv", newline="")))
    assert sorted(r["name"] for r in skipped) == sorted(["broken.png", "gone.png", rows[0]["image"]])
    assert (tmp_path / "out" / "PQ-overall.pth").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda argv, tmp: argv.__setitem__(7, "quality"), "no score column 'quality'"),
        (lambda argv, tmp: argv.__setitem__(3, str(tmp / "missing")), "--image-root"),
        (lambda argv, tmp: argv.extend(["--val-split", "0.001"]), "validation split has 0"),
        (lambda argv, tmp: argv.extend(["--init", str(tmp / "none.pth")]), "not found"),
        (lambda argv, tmp: argv.extend(["--class-text", "Good", "Bad photo."]), "--class-text"),
        (lambda argv, tmp: argv.extend(["--epochs", "0"]), "epochs"),
    ],
)
def test_cli_refuses_bad_input_before_any_work(blur_db, tmp_path, capsys, change, message):
    argv = _cli(blur_db, tmp_path / "out")
    change(argv, tmp_path)
    assert _script().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_empty_split_after_unreadable_images_is_an_error(tiny_clip, tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"broken")
    _write_csv(tmp_path / "labels.csv", [{"image": n, "mos": str(i)} for i, n in enumerate(["a.png", "b.png", "c.png"] * 2)])
    data = prepare_training_data(tmp_path / "labels.csv", tmp_path, "mos", val_split=0.4)
    model, tokenizer = tiny_clip
    with pytest.raises(TrainingDataError, match="could not be read"):
        learner = QualityPromptLearner.from_text_pair(model, tokenizer)
        train_pq_prompts(model, learner, data, tmp_path / "out", TrainConfig(epochs=1), progress=False, num_blocks=2)


def test_xlsx_tables_and_a_separate_validation_table(blur_db, tmp_path):
    from openpyxl import Workbook

    names = sorted(p.name for p in blur_db.glob("*.png"))
    for split, chosen in (("train", names[:5]), ("val", names[5:8])):
        book = Workbook()
        sheet = book.active
        sheet.append(["name", "prompt", "mos"])  # 'name' is found without --image-column
        for index, name in enumerate(chosen):
            sheet.append([name, "a photo", float(index)])
        sheet.append([names[9], "a photo", None])  # no score: skipped
        book.save(tmp_path / f"{split}.xlsx")
    data = prepare_training_data(tmp_path / "train.xlsx", blur_db, "mos", val=tmp_path / "val.xlsx")
    assert [item.name for item in data.train] == names[:5] and [item.name for item in data.val] == names[5:8]
    assert [item.score for item in data.val] == [0.0, 1.0, 2.0]
    assert [s.row for s in data.skipped] == [6, 4] and all("not a number" in s.reason for s in data.skipped)


def test_hflip_caches_the_mirrored_view_exactly(blur_db, tiny_clip, tmp_path):
    from PIL import ImageOps

    from grefine.maps.clip_surgery import vvv_surgery
    from grefine.train.features import encode_images

    source = sorted(blur_db.glob("*.png"))[0]
    ImageOps.mirror(Image.open(source)).save(tmp_path / "mirrored.png")
    surgery = vvv_surgery(tiny_clip[0], num_blocks=1)
    both = encode_images(surgery, [source], hflip=True, progress=False).features
    mirrored = encode_images(surgery, [tmp_path / "mirrored.png"], progress=False).features
    assert both.shape[:2] == (1, 2) and torch.allclose(both[0, 1], mirrored[0, 0], atol=1e-6)
    assert not torch.allclose(both[0, 0], both[0, 1], atol=1e-3)
