"""Loading PASD and Stable Diffusion components with clear errors and strict key checks."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from diffusers import ModelMixin

from grefine.errors import MissingWeightsError

CHECKPOINT_HELP = (
    "See checkpoints/README.md for where the Stable Diffusion 1.5 and PASD weights come from and how to "
    "point the config at a hub id or a local folder (PASD: stage2.pasd_model with 'unet/' and 'controlnet/' "
    "inside stage2.pasd_subfolder)."
)


def pasd_component(subfolder: str | None, component: str) -> str:
    """``<subfolder>/<component>``, or ``component`` when ``subfolder`` is None or empty."""
    return f"{subfolder.strip('/')}/{component}" if subfolder and subfolder.strip("/") else component


Model = TypeVar("Model", bound=ModelMixin)


class PASDWeightsNotFoundError(MissingWeightsError, FileNotFoundError):
    """A Stable Diffusion or PASD component cannot be found locally or on the (offline) hub."""


class PASDCheckpointMismatchError(ValueError):
    """A checkpoint loaded, but its state-dict keys or shapes differ from the model's."""


def load_component(loader: Callable[..., Any], source: str | os.PathLike, subfolder: str, **kwargs: Any) -> Any:
    """``loader(source, subfolder=subfolder, **kwargs)``, turning "not found" into :class:`PASDWeightsNotFoundError`."""
    source = os.fspath(source)
    looks_like_path = os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1
    if looks_like_path and not os.path.isdir(os.path.expanduser(source)):
        raise PASDWeightsNotFoundError(f"the folder {source!r} does not exist. {CHECKPOINT_HELP}")
    if os.path.isdir(source) and not os.path.isdir(os.path.join(source, subfolder)):
        raise PASDWeightsNotFoundError(
            f"{os.path.join(source, subfolder)!r} does not exist: the folder {source!r} has no '{subfolder}' "
            f"component. {CHECKPOINT_HELP}"
        )
    try:
        return loader(source, subfolder=subfolder, **kwargs)
    except OSError as error:
        raise PASDWeightsNotFoundError(
            f"cannot load '{subfolder}' from {source!r} (a local folder or a Hugging Face hub id; the hub is "
            f"unreachable when HF_HUB_OFFLINE=1): {error}\n{CHECKPOINT_HELP}"
        ) from error


def load_pasd_model(model_class: type[Model], source: str | os.PathLike, subfolder: str, **kwargs: Any) -> Model:
    """Load a PASD ``unet``/``controlnet`` and require every checkpoint key to match the model exactly."""
    model, info = load_component(model_class.from_pretrained, source, subfolder, output_loading_info=True, **kwargs)
    problems = {name: info.get(name) for name in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(name)}
    if problems:
        hint = ""
        if any("attn2_plus" in key or "proj_in_plus" in key for key in problems.get("unexpected_keys", [])):
            hint = " This looks like a 'pasd_light' checkpoint, which grefine does not support; use 'pasd'."
        details = "; ".join(f"{name}: {sorted(map(str, keys))[:5]}{' ...' if len(keys) > 5 else ''}" for name, keys in problems.items())
        raise PASDCheckpointMismatchError(
            f"{os.path.join(os.fspath(source), subfolder)!r} does not match {model_class.__name__}: {details}.{hint}"
        )
    return model
