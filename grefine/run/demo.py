"""The built-in example set: photos that scikit-image ships, each with a prompt.

Used by ``scripts/refine.py`` when no ``--input`` is given, so that the main job runs on a fresh
machine with nothing but the weights.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from grefine.image_io import save_image_atomic, write_text_atomic

DEMO_PROMPTS = {
    "astronaut": "a smiling astronaut in a white space suit holding a helmet, an american flag behind her",
    "coffee": "a cup of coffee with latte art on a saucer, a spoon beside it",
    "chelsea": "a tabby cat with green eyes looking to the side, soft light",
    "rocket": "a rocket on the launch pad under a clear blue sky",
}


def write_demo_inputs(folder: Path) -> list[Path]:
    """Write the demo images as PNG with sidecar ``.txt`` prompts; returns the image paths."""
    import skimage.data

    paths = []
    for name, prompt in DEMO_PROMPTS.items():
        path = folder / f"{name}.png"
        if not path.is_file():
            save_image_atomic(Image.fromarray(getattr(skimage.data, name)()), path)
        write_text_atomic(prompt + "\n", path.with_suffix(".txt"))
        paths.append(path)
    return paths
