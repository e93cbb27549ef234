"""Eq. 5's text features: encoded once per distinct text, kept in memory and on disk (keyed by the
tower's weights and the encoding), a damaged or unwritable cache never losing a result."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from grefine.config import ConfigError, GRefineConfig
from grefine.maps.text_features import (
    CACHE_ENV,
    TextFeatures,
    default_cache_dir,
    resolve_text_cache,
    tower_fingerprint,
)
from grefine.tiny import build_tiny_open_clip

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["a red cube", "cube", "", "a red cube"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_open_clip()


def test_features_are_normalised_in_order_and_each_text_is_encoded_once(tiny, text_rows):
    model, tokenizer = tiny
    rows = text_rows(model)
    features = TextFeatures(model, tokenizer, rows_per_batch=100)
    out = features(TEXTS)
    assert out.shape == (4, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    assert torch.equal(out[0], out[3]) and not torch.allclose(out[0], out[1])
    assert rows == [100, 100, 55] and features.encoded == 3  # 3 distinct texts x 85 rows, in forwards of 100
    assert torch.equal(features(["cube"])[0], out[1]) and rows == [100, 100, 55]  # from memory


def test_rows_cut_to_their_own_length_give_encode_texts_features(tiny, text_rows):
    """The causal tower is run over the batch's longest row only; the features are those of
    ``encode_text`` over the whole 77-token context."""
    model, tokenizer = tiny
    rows = text_rows(model)
    texts = ["a red cube on a blue table", "cube", ""]
    bare = TextFeatures(model, tokenizer, encoding="bare")(texts)
    assert rows == [3]
    with torch.no_grad():
        full = model.encode_text(tokenizer(texts))
    torch.testing.assert_close(bare, torch.nn.functional.normalize(full, dim=-1), rtol=0, atol=1e-6)


def test_the_disk_cache_gives_the_computed_features_bit_for_bit(tiny, tmp_path, text_rows):
    model, tokenizer = tiny
    first = TextFeatures(model, tokenizer, cache_dir=tmp_path)
    computed = first(TEXTS)
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == 3 and not list(tmp_path.rglob("*.tmp"))
    assert files[0].parent.parent.parent.name == tower_fingerprint(model, tokenizer)[:32]
    rows = text_rows(model)
    second = TextFeatures(model, tokenizer, cache_dir=tmp_path)  # another run
    assert torch.equal(second(TEXTS), computed)
    assert rows == [] and second.encoded == 0 and second.disk_hits == 3


def test_the_cache_is_keyed_by_weights_and_encoding(tiny, tmp_path):
    model, tokenizer = tiny
    TextFeatures(model, tokenizer, cache_dir=tmp_path)(["cube"])
    other_weights, _ = build_tiny_open_clip(seed=1)
    assert tower_fingerprint(other_weights, tokenizer) != tower_fingerprint(model, tokenizer)
    retrained = TextFeatures(other_weights, tokenizer, cache_dir=tmp_path)
    bare = TextFeatures(model, tokenizer, encoding="bare", cache_dir=tmp_path)
    for features in (retrained, bare):
        features(["cube"])
        assert features.encoded == 1 and features.disk_hits == 0
    assert not torch.allclose(bare(["cube"]), TextFeatures(model, tokenizer, cache_dir=tmp_path)(["cube"]))
    with torch.no_grad():  # a weight changed in place: a new fingerprint
        model.ln_final.weight[0] += 1.0
        changed = tower_fingerprint(model, tokenizer)
        model.ln_final.weight[0] -= 1.0
    assert changed != tower_fingerprint(model, tokenizer)


def test_a_damaged_cache_file_is_recomputed_and_rewritten(tiny, tmp_path):
    model, tokenizer = tiny
    expected = TextFeatures(model, tokenizer, cache_dir=tmp_path)(["cube"])
    (path,) = tmp_path.rglob("*.npy")
    path.write_bytes(b"not a numpy file")
    again = TextFeatures(model, tokenizer, cache_dir=tmp_path)
    torch.testing.assert_close(again(["cube"]), expected, rtol=0, atol=1e-6)
    assert again.encoded == 1 and np.load(path).shape == (32,)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_cache_folder_warns_and_keeps_features_in_memory(tiny, tmp_path):
    model, tokenizer = tiny
    tmp_path.chmod(0o500)
    try:
        features = TextFeatures(model, tokenizer, cache_dir=tmp_path / "cache")
        with pytest.warns(UserWarning, match="cannot be written"):
            out = features(["cube", "cat"])
        assert out.shape == (2, 32) and features(["cat"]).shape == (1, 32) and features.encoded == 2
    finally:
        tmp_path.chmod(0o700)


def test_a_cache_path_that_is_a_file_warns_and_keeps_features_in_memory(tiny, tmp_path):
    model, tokenizer = tiny
    blocker = tmp_path / "file"
    blocker.write_text("x")
    features = TextFeatures(model, tokenizer, cache_dir=blocker)
    with pytest.warns(UserWarning, match="cannot be written"):
        out = features(["cube", "cat"])
    assert out.shape == (2, 32) and features(["cat"]).shape == (1, 32) and features.encoded == 2


def test_memory_keeps_the_most_recent_texts(tiny):
    model, tokenizer = tiny
    features = TextFeatures(model, tokenizer, encoding="bare", max_memory=2)
    features(["a", "b"])
    features(["a", "c"])  # "b" is the least recently used
    features(["a", "b"])
    assert features.encoded == 4


def test_cache_folders(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert resolve_text_cache("auto") == tmp_path / "mine" / "text-features"
    assert resolve_text_cache(None) is None and resolve_text_cache(tmp_path) == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "grefine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "grefine"


def test_the_tests_cache_is_a_temporary_folder():
    assert Path(os.environ[CACHE_ENV]).name.startswith("grefine-test-cache-")


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("aq_map", "feature_norm", "rows", "tokens, channels"),
        ("pq_map", "feature_norm", "tokenwise", "tokens, channels"),
        ("aq_map", "text_encoding", "templates", "ensemble, bare"),
        ("aq_map", "text_cache", " ", "blank"),
    ],
)
def test_config_checks_the_readout_keys(section, key, value, message):
    with pytest.raises(ConfigError, match=message):
        GRefineConfig.from_dict({section: {key: value}})
    assert GRefineConfig.from_dict({"aq_map": {"text_cache": None}}).aq_map.text_cache is None


def test_bad_constructor_values_are_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="text_encoding"):
        TextFeatures(model, tokenizer, encoding="templates")
    with pytest.raises(ValueError, match="rows_per_batch"):
        TextFeatures(model, tokenizer, rows_per_batch=0)


def test_the_maps_benchmark_reports_both_encodings(capsys, tmp_path):
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("benchmark_maps", REPO / "scripts" / "benchmark_maps.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    database = tmp_path / "data.csv"
    database.write_text("name,prompt\na.jpg,a red cube\nb.jpg,a red cube\nc.jpg,a cat on a hat\n", encoding="utf-8")
    script.main(["--random-weights", "--tiny", "--prompts", "2", "--database", str(database)])
    out = capsys.readouterr().out
    # "", "a red cube", "red cube", "cube", "a cat on a hat", "cat", "hat"
    assert "3 images, 2 prompts, 7 distinct texts" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["ensemble"], ["bare"])}
    assert set(rows) == {"ensemble", "bare"} and all(len(values) == 8 for values in rows.values())
    assert float(rows["ensemble"][2]) > float(rows["bare"][2])  # 85 rows per text against 1
