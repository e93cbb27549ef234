"""Where each metric's weights come from, for the download plan (:mod:`grefine.weights`) and
``scripts/download_weights.py``.

A metric's own library fetches its weights when the metric is created: pyiqa its release files
(``{HF_ENDPOINT}/chaofengc/IQA-PyTorch-Weights/resolve/main/<file>``) into ``<torch hub
dir>/pyiqa/``, timm a backbone's ImageNet weights from the hub. :func:`metric_weights` names those
files for the metrics whose files are known here — the URLs are read from pyiqa's own tables —, so
that the plan can say what will be fetched and how large, and grefine fetches them first; a metric
that needs no weights adds nothing; any other metric is listed as fetched by its library on
creation, size unknown (``scripts/download_weights.py`` creates it once to fill its caches).

Downloads of the default metrics (:data:`grefine.config.DEFAULT_METRICS`), from the files'
parameter counts (fp32): ``topiq_nr`` 283 MB (CFANet 45.3 M parameters, 181 MB, and timm's
ResNet-50 ImageNet weights, 25.6 M, 102 MB), ``musiq`` 109 MB (27.1 M); ``piqe``, ``psnr``,
``ssim`` none.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

from grefine.weights import HubFiles, UrlFile, WeightSource

WEIGHT_FREE = frozenset({"psnr", "ssim", "piqe"})
"""Metrics computed without any weights."""

ON_CREATION = "fetched by its library when the metric is created (size not known in advance)"


def pyiqa_file(metric: str, module: str, key: str) -> WeightSource:
    """The release file ``default_model_urls[key]`` of ``pyiqa.archs.<module>``, kept where pyiqa
    keeps it (``load_file_from_url``: ``<torch hub dir>/pyiqa/<file name>``)."""
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    url = importlib.import_module(f"pyiqa.archs.{module}").default_model_urls[key]
    target = Path(DEFAULT_CACHE_DIR) / os.path.basename(urlparse(url).path)
    return WeightSource(f"metric {metric}: {key} weights (pyiqa)", url, "metrics", urls=(UrlFile(url, str(target)),))


def timm_backbone(metric: str, architecture: str) -> WeightSource:
    """timm's default ImageNet weights of ``architecture`` (``timm.create_model(pretrained=True)``):
    ``model.safetensors`` of its hub repository (``pytorch_model.bin`` when there is none)."""
    import timm

    repo = timm.models.get_pretrained_cfg(architecture).hf_hub_id
    return WeightSource(
        f"metric {metric}: {architecture} backbone (timm)",
        repo,
        "metrics",
        hub=HubFiles(repo, "files", names=(("model.safetensors", "pytorch_model.bin"),)),
    )


KNOWN: dict[str, Callable[[], list[WeightSource]]] = {
    "topiq_nr": lambda: [timm_backbone("topiq_nr", "resnet50"), pyiqa_file("topiq_nr", "topiq_arch", "cfanet_nr_koniq_res50")],
    "musiq": lambda: [pyiqa_file("musiq", "musiq_arch", "koniq10k")],
}
"""Metric name -> the files its creation downloads (pyiqa's ``default_model_configs`` settings)."""


def metric_weights(names: Sequence[str]) -> list[WeightSource]:
    """The weights the metrics ``names`` download when created (see the module docstring)."""
    sources: list[WeightSource] = []
    for name in names:
        key = name.lower()
        if key in WEIGHT_FREE:
            continue
        sources += KNOWN[key]() if key in KNOWN else [WeightSource(f"metric {key}", key, "metrics", note=ON_CREATION)]
    return sources
