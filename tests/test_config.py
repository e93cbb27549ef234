"""The config mechanism: types from annotations, ranges and choices from field metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from grefine.config import ConfigError, GRefineConfig, check_value, one_of, within


@dataclass
class _Section:
    """A section as another component would add it: the checks come from its declarations alone."""

    margin: float = field(default=0.1, metadata=within(0, 1, high_open=True))
    size: Optional[int] = field(default=None, metadata=within(8))
    weights: list[float] = field(default_factory=list, metadata=within(0))
    mode: str = field(default="a", metadata=one_of("a", "b"))
    enabled: bool = True


@pytest.mark.parametrize(
    "name, value, expected",
    [("margin", 0, 0.0), ("margin", 0.5, 0.5), ("size", None, None), ("size", 8, 8), ("weights", [1, 2.5], [1.0, 2.5]), ("mode", "b", "b"), ("enabled", False, False)],
)
def test_declared_fields_accept_their_values(name, value, expected):
    checked = check_value(_Section, name, value, f"x.yaml: s.{name}")
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("margin", 1, r"x.yaml: s.margin must be in \[0, 1\), got 1"),
        ("margin", True, r"must be a number, got True \(a boolean\)"),
        ("margin", "0.1", r"must be a number, got '0.1' \(a string\)"),
        ("size", 4, r"must be ≥ 8, got 4"),
        ("size", 9.5, r"must be a whole number or null, got 9.5"),
        ("weights", [1, -1], r"must be ≥ 0, got -1"),
        ("weights", 3, r"must be a list of numbers, got 3 \(a whole number\); write it as a list, e.g. \[3\]"),
        ("mode", "c", r"must be one of a, b; got 'c'"),
        ("enabled", "yes", r"must be true or false"),
    ],
)
def test_declared_fields_refuse_wrong_types_and_ranges(name, value, message):
    with pytest.raises(ConfigError, match=message):
        check_value(_Section, name, value, f"x.yaml: s.{name}")


def test_shipped_configs_pass_their_own_checks_and_cross_field_rules():
    from tests.conftest import REPO

    shipped = [path for path in (REPO / "configs").rglob("*.yaml") if "methods" not in path.parts]
    assert len(shipped) >= 6  # default, authors-notebook, tiny-random and the ablations
    for path in shipped:
        GRefineConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="min_strength .* must not exceed"):
        GRefineConfig.from_dict({"stage1": {"min_strength": 0.9, "max_strength": 0.5}})


def test_a_config_states_only_what_differs_from_its_base(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("total_steps: 30\nmask:\n  dilation: 3\n  feather: 2\nmetrics: [psnr, ssim]\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../base.yaml\nmask:\n  dilation: 5\n")
    (tmp_path / "sub" / "top.yaml").write_text("base: mid.yaml\nmetrics: [piqe]\nablation:\n  drop_stage2: true\n")
    config = GRefineConfig.from_yaml(tmp_path / "sub" / "top.yaml")
    assert (config.total_steps, config.mask.dilation, config.mask.feather) == (30, 5, 2)  # sections merge key by key
    assert config.metrics == ["piqe"] and config.ablation.drop_stage2  # lists and values replace
    assert config.source == str(tmp_path / "sub" / "top.yaml")


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "bases form a cycle"),
        ({"a.yaml": "base: gone.yaml\n"}, r"gone.yaml \(the base of .*a.yaml\): no such file"),
        ({"a.yaml": "base: [x]\n"}, "base must be the path of another config"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "mask:\n  dilaton: 3\n"}, "dilaton"),  # the merged file is checked
    ],
)
def test_bad_bases_are_refused_naming_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        GRefineConfig.from_yaml(tmp_path / "a.yaml")
