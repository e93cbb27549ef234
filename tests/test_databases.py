"""Database loaders on miniature copies of each release's layout, and the real AGIQA-3K labels."""
from __future__ import annotations

import csv
import json
import os

import pandas as pd
import pytest
from open_clip import IMAGENET_CLASSNAMES
from PIL import Image

from grefine import load_database
from grefine.data.databases import (
    DATABASES,
    DatabaseError,
    DatabaseSpec,
    SkippedRecordsWarning,
    genimage_class_index,
)

AGIQA3K_HEADER = ["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align"]


def _image(path, size=(12, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 60)).save(path)
    return path


def _agiqa3k(root, rows):
    folder = root / "AGIQA-3K" / "AGIQA-3K"  # the archive's nested folder
    folder.mkdir(parents=True)
    with open(folder / "data.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(AGIQA3K_HEADER)
        writer.writerows(rows)
    return folder


def test_agiqa3k_finds_nested_images_and_reports_what_it_skips(tmp_path):
    folder = _agiqa3k(
        tmp_path,
        [
            ["AttnGAN_normal_000.jpg", "statue of a man", "", "", "", "0.96", "0.22", "0.41", "0.62"],
            ["sd1.5_highcorr_001.jpg", "a cosmic universe, cold color, HDR lighting, anime style", "cold color", "HDR lighting", "anime style", "2.5", "0.3", "3.1", "0.4"],
            ["glide_normal_002.jpg", "", "", "", "", "1.0", "0.1", "1.0", "0.1"],  # no prompt
            ["midjourney_normal_003.jpg", "a tray of sushi", "", "", "", "1.5", "0.2", "1.6", "0.3"],  # not downloaded
        ],
    )
    for name in ("AttnGAN_normal_000.jpg", "sd1.5_highcorr_001.jpg", "glide_normal_002.jpg"):
        _image(folder / "images" / name)
    with pytest.warns(SkippedRecordsWarning) as caught:
        database = load_database("agiqa3k", tmp_path)
    assert [record.name for record in database] == ["AttnGAN_normal_000.jpg", "sd1.5_highcorr_001.jpg"]
    first, second = database
    assert first.prompt == "statue of a man" and first.split == "all" and first.error == ""
    assert second.prompt == "a cosmic universe, cold color, HDR lighting, anime style"
    assert second.mos == {"mos_quality": 2.5, "std_quality": 0.3, "mos_align": 3.1, "std_align": 0.4}
    assert second.image_path == folder / "images" / "sd1.5_highcorr_001.jpg"
    assert database.skipped == {
        "listed row(s) without a prompt": ["glide_normal_002.jpg"],
        "listed image(s) not found": ["midjourney_normal_003.jpg"],
    }
    messages = [str(warning.message) for warning in caught]
    assert any("1 listed image(s) not found" in m and "midjourney_normal_003.jpg" in m for m in messages)


def _real_agiqa3k_rows(shared_dir):
    with open(shared_dir / "data" / "agiqa3k.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_real_agiqa3k_labels_parse(tmp_path, shared_dir):
    """All 2,982 rows of the real data.csv are listed; one stand-in image per prompt is found."""
    rows = _real_agiqa3k_rows(shared_dir)
    assert len(rows) == 2982 and len({row["prompt"] for row in rows}) == 300
    root = tmp_path / "AGIQA-3K"
    root.mkdir()
    os.symlink(shared_dir / "data" / "agiqa3k.csv", root / "data.csv")
    one_per_prompt = {row["prompt"]: row for row in rows}
    for row in one_per_prompt.values():
        _image(root / "imgs" / row["name"])
    with pytest.warns(SkippedRecordsWarning, match="2682 listed image"):
        database = load_database("agiqa3k", tmp_path)
    assert len(database) == 300 and len(database.skipped["listed image(s) not found"]) == 2682
    by_name = {row["name"]: row for row in rows}
    for record in database:
        row = by_name[record.name]
        assert record.prompt == row["prompt"].strip() and record.image_path.parent == root / "imgs"
        assert record.mos["mos_quality"] == pytest.approx(float(row["mos_quality"]))
        assert set(record.mos) == {"mos_quality", "std_quality", "mos_align", "std_align"}
    assert {record.prompt for record in database} == set(one_per_prompt)


def test_the_real_agiqa3k_prompts_already_hold_their_adjectives_and_style(shared_dir):
    """Why the loader takes ``prompt`` as is: the authors wrote it as
    "<subject>, <adj1>, <adj2>, <style>" — in every one of the 2,982 rows."""
    rows = _real_agiqa3k_rows(shared_dir)
    with_modifiers = 0
    for row in rows:
        modifiers = [row[key] for key in ("adj1", "adj2", "style") if row[key]]
        with_modifiers += bool(modifiers)
        tail = [part.strip() for part in row["prompt"].split(",")][-len(modifiers):] if modifiers else []
        assert tail == modifiers, row["name"]
    assert with_modifiers == 2388


def test_agiqa1k_reads_the_xlsx(tmp_path):
    pd.DataFrame(
        {"Image": ["deepai_10_14_0_0.jpg", "deepai_10_14_0_1.jpg"], "Prompt": ["a red car", "a girl, oil painting"], "MOS": [0.53, -1.2]}
    ).to_excel(tmp_path / "AIGC_MOS_Zscore.xlsx", index=False)
    for name in ("deepai_10_14_0_0.jpg", "deepai_10_14_0_1.jpg"):
        _image(tmp_path / "AGIQA-1K" / "file" / name)
    database = load_database("agiqa1k", tmp_path)
    assert [(r.name, r.prompt, r.mos) for r in database] == [
        ("deepai_10_14_0_0.jpg", "a red car", {"MOS": 0.53}),
        ("deepai_10_14_0_1.jpg", "a girl, oil painting", {"MOS": -1.2}),
    ]


def _aigiqa20k(root, test_format="csv"):
    train = pd.DataFrame({"name": ["DALLE2_0000.png", "SD15_0001.png"], "prompt": ["a fox", "a boat"], "mos": [60.5, 41.0]})
    train.to_excel(root / "info_train.xlsx", index=False)
    pd.DataFrame({"name": ["IF_0002.png"], "prompt": ["a tree"]}).to_excel(root / "info_val.xlsx", index=False)
    test = pd.DataFrame({"name": ["PixArt_0003.png"], "prompt": ["a lamp"]})
    test.to_csv(root / "info_test.csv", index=False) if test_format == "csv" else test.to_excel(root / "info_test.xlsx", index=False)
    for split, name in [("train", "DALLE2_0000.png"), ("train", "SD15_0001.png"), ("val", "IF_0002.png"), ("test", "PixArt_0003.png")]:
        _image(root / "AIGIQA-20K" / split / name)


@pytest.mark.parametrize("test_format", ["csv", "xlsx"])
def test_aigiqa20k_splits_from_csv_or_xlsx(tmp_path, test_format):
    _aigiqa20k(tmp_path, test_format)
    database = load_database("aigiqa20k", tmp_path)
    assert database.splits == ["train", "val", "test"] and len(database) == 4
    assert database[0].mos == {"mos": 60.5} and database[2].mos == {} and database[2].split == "val"
    assert [r.name for r in load_database("aigiqa20k", tmp_path, split="test")] == ["PixArt_0003.png"]
    assert len(load_database("aigiqa20k", tmp_path, split=["train", "val"])) == 3


def test_match_keeps_one_generator_before_sampling(tmp_path):
    _aigiqa20k(tmp_path)
    assert [r.name for r in load_database("aigiqa20k", tmp_path, match="SD15_*")] == ["SD15_0001.png"]
    assert [r.name for r in load_database("aigiqa20k", tmp_path, match=["DALLE2_*", "IF_*"], limit=5)] == ["DALLE2_0000.png", "IF_0002.png"]
    assert len(load_database("aigiqa20k", tmp_path, match="*", limit=1)) == 1
    with pytest.raises(DatabaseError, match=r"no record name matches sd15_\* \(names look like: DALLE2_0000.png"):
        load_database("aigiqa20k", tmp_path, match="sd15_*")
    with pytest.raises(DatabaseError, match="match needs non-empty name patterns"):
        load_database("aigiqa20k", tmp_path, match=[])


def test_an_absent_split_is_not_there_unless_asked_for(tmp_path):
    _aigiqa20k(tmp_path)
    (tmp_path / "info_test.csv").unlink()
    assert load_database("aigiqa20k", tmp_path).splits == ["train", "val"]
    with pytest.raises(DatabaseError, match="split 'test' not found under .*info_test.csv or info_test.xlsx"):
        load_database("aigiqa20k", tmp_path, split="test")
    with pytest.raises(DatabaseError, match="unknown split.*'dev'.*train, val, test"):
        load_database("aigiqa20k", tmp_path, split="dev")


def test_diffusiondb_part_json_parquet_and_large_webp(tmp_path):
    part1 = tmp_path / "images" / "part-000001"
    part1.mkdir(parents=True)
    entries = {
        "3bfcd9cf-26ea-4303-bbe1-b095853f5360.png": {"p": "a castle, trending on artstation", "se": 1, "c": 7.0, "st": 50, "sa": "k_lms"},
        "5f47c66c-51d4-4f2c-a872-a68518f44adb.png": {"p": "", "se": 2, "c": 7.0, "st": 50, "sa": "k_lms"},
    }
    (part1 / "part-000001.json").write_text(json.dumps(entries))
    for name in entries:
        _image(part1 / name)
    table = pd.DataFrame(
        {
            "image_name": ["f3501e05-aef7-4225-a9e9-f516527408ac.png", "99c36256-2c20-40ac-8e83-8369e9a28f32.png"],
            "prompt": ["a cyberpunk street", "a portrait of a knight"],
            "part_id": [2, 2], "seed": [3, 4], "step": [50, 50], "cfg": [7.0, 7.0], "sampler": [8, 8],
            "width": [512, 512], "height": [512, 512], "user_name": ["u", "v"],
            "timestamp": pd.to_datetime(["2022-08-10", "2022-08-11"], utc=True),
            "image_nsfw": [0.1, 0.2], "prompt_nsfw": [0.0, 0.0],
        }
    )  # fmt: skip
    table.to_parquet(tmp_path / "metadata.parquet")
    _image(tmp_path / "images" / "part-000002" / "f3501e05-aef7-4225-a9e9-f516527408ac.png")  # the other is not downloaded
    large = tmp_path / "diffusiondb-large-part-1" / "part-000001"
    large.mkdir(parents=True)
    (large / "part-000001.json").write_text(json.dumps({"0a1b2c3d-0000-4000-8000-000000000001.webp": {"p": "a foggy forest"}}))
    webp = large / "0a1b2c3d-0000-4000-8000-000000000001.webp"
    Image.new("RGB", (16, 16), (10, 120, 40)).save(webp, format="WEBP")

    with pytest.warns(SkippedRecordsWarning):
        database = load_database("diffusiondb", tmp_path)
    assert database.splits == ["2m", "large"]
    assert {(r.name, r.prompt, r.split) for r in database} == {
        ("3bfcd9cf-26ea-4303-bbe1-b095853f5360.png", "a castle, trending on artstation", "2m"),
        ("f3501e05-aef7-4225-a9e9-f516527408ac.png", "a cyberpunk street", "2m"),
        ("0a1b2c3d-0000-4000-8000-000000000001.webp", "a foggy forest", "large"),
    }
    assert database.skipped == {
        "listed row(s) without a prompt": ["5f47c66c-51d4-4f2c-a872-a68518f44adb.png"],
        "listed image(s) not found": ["99c36256-2c20-40ac-8e83-8369e9a28f32.png"],
    }
    assert Image.open(database[-1].image_path).format == "WEBP" and database[-1].mos == {}


def test_genimage_prompts_from_the_class_index_and_error_records(tmp_path):
    sd = tmp_path / "stable_diffusion_v_1_4" / "imagenet_ai_0419_sdv4"
    _image(sd / "train" / "ai" / "033_sdv4_00134.png")
    _image(sd / "train" / "nature" / "n01440764_10026.JPEG")  # a real photo: not generated
    _image(sd / "train" / "ai" / "sdv4_unnumbered.png")  # a class that cannot be read
    _image(tmp_path / "glide" / "imagenet_glide" / "val" / "ai" / "GLIDE_1000_200_03_302_glide_00186.png")
    _image(tmp_path / "ADM" / "imagenet_ai_0508_adm" / "val" / "ai" / "755_adm_178.PNG")
    with pytest.warns(SkippedRecordsWarning, match="1 record.*cannot be refined.*sdv4_unnumbered.png"):
        database = load_database("genimage", tmp_path)
    assert database.splits == ["train", "val"]
    records = {r.name: r for r in database}
    assert set(records) == {"033_sdv4_00134.png", "sdv4_unnumbered.png", "GLIDE_1000_200_03_302_glide_00186.png", "755_adm_178.PNG"}
    assert records["033_sdv4_00134.png"].prompt == "a photo of a loggerhead sea turtle"
    assert records["GLIDE_1000_200_03_302_glide_00186.png"].prompt == f"a photo of a {IMAGENET_CLASSNAMES[302]}"
    assert records["755_adm_178.PNG"].prompt == f"a photo of a {IMAGENET_CLASSNAMES[755]}" and records["755_adm_178.PNG"].split == "val"
    bad = records["sdv4_unnumbered.png"]
    assert bad.prompt == "" and "cannot read the ImageNet class" in bad.error and bad.image_path.is_file()
    with pytest.warns(SkippedRecordsWarning):
        train = load_database("genimage", tmp_path, split="train")
    assert [r.name for r in train] == ["033_sdv4_00134.png", "sdv4_unnumbered.png"]


def test_genimage_class_index_naming_rules():
    assert genimage_class_index("033_sdv4_00134.png") == 33
    assert genimage_class_index("308_midjourney_45.png") == 308
    assert genimage_class_index("VQDM_1000_200_04_443_vqdm_00138.png") == 443
    assert genimage_class_index("0_adm_31.PNG") == 0
    for bad in ("1000_sdv4_00001.png", "photo.png", "033_sdv4.png"):
        with pytest.raises(ValueError, match="cannot read the ImageNet class"):
            genimage_class_index(bad)


def test_sampling_is_reproducible_and_independent_of_other_images(tmp_path):
    names = [f"midjourney_normal_{i:03d}.jpg" for i in range(40)]
    folder = _agiqa3k(tmp_path, [[name, f"prompt {i}", "", "", "", "1", "0", "1", "0"] for i, name in enumerate(names)])
    for name in names:
        _image(folder / name)
    database = load_database("agiqa3k", tmp_path)
    sample = database.sample(10, seed=3)
    assert len(sample) == 10 and [r.name for r in sample] == [r.name for r in database.sample(10, seed=3)]
    assert [r.name for r in sample] == sorted(r.name for r in sample)  # the database's order is kept
    assert {r.name for r in sample} != {r.name for r in database.sample(10, seed=4)}
    assert [r.name for r in load_database("agiqa3k", tmp_path, limit=10, seed=3)] == [r.name for r in sample]
    assert len(database.sample(100)) == 40
    # another copy holding only some of the images picks the same ones among those it has
    kept = set(names[::2])
    for name in set(names) - kept:
        (folder / name).unlink()
    with pytest.warns(SkippedRecordsWarning):
        partial = load_database("agiqa3k", tmp_path)
    draws = {r.name for r in database.sample(20, seed=3)}
    assert {r.name for r in partial.sample(len(draws & kept), seed=3)} == draws & kept
    with pytest.raises(DatabaseError, match="at least one"):
        database.sample(0)


def test_bad_names_roots_and_metadata_are_refused_clearly(tmp_path):
    with pytest.raises(DatabaseError, match="unknown database 'agiqa2k'; known databases: agiqa1k, agiqa3k, aigiqa20k, diffusiondb, genimage"):
        load_database("agiqa2k", tmp_path)
    with pytest.raises(DatabaseError, match="not a folder"):
        load_database("agiqa3k", tmp_path / "absent")
    with pytest.raises(DatabaseError, match="no AGIQA-3K metadata under .*looked for all: data.csv"):
        load_database("agiqa3k", tmp_path)
    with pytest.raises(DatabaseError, match="no DiffusionDB metadata.*metadata.parquet.*metadata-large.parquet"):
        load_database("diffusiondb", tmp_path)
    (tmp_path / "data.csv").write_text("file,caption\na.jpg,a cat\n")
    with pytest.raises(DatabaseError, match="data.csv: expected columns name, prompt.*found file, caption"):
        load_database("agiqa3k", tmp_path)


def test_a_database_of_your_own(tmp_path, monkeypatch):
    from grefine.data.databases import DatabaseRecord

    def read(index, split):
        listing = index.find("captions.json")
        if listing is None:
            return None
        return [DatabaseRecord(name, None, prompt, {}, split) for name, prompt in json.loads(listing.read_text()).items()]

    monkeypatch.setitem(DATABASES, "mine", DatabaseSpec("Mine", {"all": "captions.json"}, read))
    (tmp_path / "captions.json").write_text(json.dumps({"cat": "a cat"}))
    _image(tmp_path / "pics" / "cat.webp")
    (record,) = load_database("mine", tmp_path)
    assert record.name == "cat.webp" and record.prompt == "a cat"  # found without its suffix
