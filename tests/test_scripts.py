"""Every command-line tool under scripts/ imports against the package as it is and answers --help.

A script is a thin layer over the library; this catches a script left behind by a refactoring
(an import of a name that moved) without running any model.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses defined in a script look their module up
    spec.loader.exec_module(module)
    return module


def test_every_script_is_covered():
    assert len(SCRIPTS) >= 10 and (REPO / "scripts" / "refine.py") in SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_script_imports_and_prints_help(path: Path, capsys):
    module = _load(path)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
