"""Shared test set-up: offline hub, the ../shared data folder, small thread counts."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# On a shared 2-core machine, OpenMP threads that spin while waiting make tiny models ~30x slower
# whenever another process holds a core; passive waiting keeps the suite's time steady.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_SHARED_NLTK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared", "nltk_data")
os.environ.setdefault("NLTK_DATA", os.path.normpath(_SHARED_NLTK))  # the tagger, read from ../shared

# AQ-Map caches text features on disk (grefine.maps.text_features): the tests' go to a temporary
# folder of their own, removed at exit, never to the user's cache.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["GREFINE_CACHE_DIR"] = tempfile.mkdtemp(prefix="grefine-test-cache-")
atexit.register(shutil.rmtree, os.environ["GREFINE_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} not found: the tests read real data from ../shared beside the checkout.")
    return SHARED


@pytest.fixture(scope="session")
def pq_embeddings_dir(shared_dir: Path) -> Path:
    return shared_dir / "pq_embeddings"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a CPU shared with other jobs two
    spinning OpenMP threads made each tiny pipeline call ~40x slower (1 s -> 40 s, measured).
    A module that runs tiny models uses it (``pytestmark = pytest.mark.usefixtures("one_thread")``);
    the thread count is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def text_rows():
    """``text_rows(model)`` returns the list that records the rows of every text-tower forward of
    an open_clip ``model`` (its text transformer), whichever path encodes them."""
    handles = []

    def watch(model) -> list[int]:
        rows: list[int] = []
        handles.append(model.transformer.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0])))
        return rows

    yield watch
    for handle in handles:
        handle.remove()
