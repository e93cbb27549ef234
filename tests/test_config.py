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

    for path in (REPO / "configs").glob("*.yaml"):
        GRefineConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="min_strength .* must not exceed"):
        GRefineConfig.from_dict({"stage1": {"min_strength": 0.9, "max_strength": 0.5}})
