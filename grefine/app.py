"""The interactive app (``scripts/app.py``): one image, its maps, and its mask edited before refining.

The steps, each a function here (the Gradio page, :func:`build_app`, only wires them):

1. :func:`analyze` — PQ-Map and AQ-Map of the image and prompt (one maps pass): P, D, the scores
   p and a, the phrase table (:func:`grefine.run.runner.phrase_table`), Eq. 9's stage-1
   strength and the gate's verdict;
2. :func:`mask_of` — the stage-1 mask: Eq. 9's ``Bi(1 − P + D)`` at the chosen bounds and
   dilation (:func:`~grefine.refine.mask.binarize`), or an empty one, with the regions painted
   by hand added and removed (:func:`strokes_of`), feathered (:func:`~grefine.refine.mask.feathered`);
   it is recomputed whenever a setting or a stroke changes, before anything is refined;
3. :func:`refine_masked` — the pipeline with that mask, the chosen strengths and steps
   (δ = 0: stage 2 off), the gate off (the user asked for this refinement), one ``verify``
   round at most (its candidates and its revert still apply);
4. :func:`export` — the refined image, the maps, the mask and the phrase table as files.

Gradio is imported only by :func:`build_app` (the optional extra ``pip install -e ".[app]"``);
the page loads nothing from the network (Gradio's analytics are off, the theme's fonts are
Gradio's own files, no share link).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from PIL import Image

from grefine.config import GateConfig
from grefine.image_io import as_rgb_image, heatmap_overlay, map_to_image, save_image_atomic, write_text_atomic
from grefine.maps.aq_map import AQMapResult
from grefine.maps.pq_map import PQMapResult
from grefine.pipeline import GateDecision, GRefineOutput, GRefinePipeline, gate_decision
from grefine.refine.mask import MaskResult, binarize, feathered, stage1_strength
from grefine.run.report import DEFECT_LABELS
from grefine.run.runner import phrase_table

if TYPE_CHECKING:  # pragma: no cover
    import gradio

ADD_COLOUR = "#22c55e"
"""Brush colour that adds a region to the mask (green)."""
REMOVE_COLOUR = "#000000"
"""Brush colour that removes a region from the mask (black)."""
MASK_TINT = (230, 40, 40)
PHRASE_HEADERS = ["phrase", "noun", "ancestor", "score a_phs", "noun score a_pns", "alignment", "emphasised"]
START_AUTOMATIC = "Eq. 9 (automatic)"
START_EMPTY = "empty (paint your own)"


@dataclass
class Analysis:
    """The maps of one image and prompt (:func:`analyze`), kept while the mask is edited."""

    image: Image.Image
    prompt: str
    pq: PQMapResult
    aq: AQMapResult
    strength1: float
    gate: GateDecision

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.image.height, self.image.width

    def matches(self, image: Any, prompt: str) -> bool:
        """Whether these maps are those of ``image`` and ``prompt`` (they may have changed since)."""
        if image is None or prompt != self.prompt:
            return False
        return np.array_equal(np.asarray(as_rgb_image(image)), np.asarray(self.image))


@dataclass(frozen=True)
class MaskSettings:
    """Eq. 9's mask settings (as in the config's ``mask`` section); ``automatic=False`` starts
    from an empty mask (only the painted regions are refined)."""

    perceptual_bound: float
    alignment_bound: float
    dilation: float
    feather: float
    automatic: bool = True


@dataclass(frozen=True)
class RefineSettings:
    """The stage-1 strength and steps, stage 2's strength δ (0: off) and steps, and the seed."""

    strength1: float
    steps1: int
    strength2: float
    steps2: int
    seed: int = 0


def analyze(pipeline: GRefinePipeline, image: Any, prompt: str) -> Analysis:
    """PQ-Map and AQ-Map of ``image`` and ``prompt`` (one maps pass), Eq. 9's strength and the gate."""
    if not prompt or not prompt.strip():
        raise ValueError("type the prompt the image was generated from: AQ-Map compares the image with it.")
    image = as_rgb_image(image, max_pixels=pipeline.config.max_pixels)
    [(pq, aq)] = pipeline.maps([image], [prompt])
    config = pipeline.config
    strength = stage1_strength(
        None if config.ablation.drop_pq_map else pq.score,
        None if config.ablation.drop_aq_map else aq.score,
        min_strength=config.stage1.min_strength,
        max_strength=config.stage1.max_strength,
    )
    return Analysis(image, prompt, pq, aq, strength, gate_decision(pq.score, aq.score, config.gate))


def strokes_of(layers: Sequence[Optional[np.ndarray]], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The regions painted on the mask editor's layers (RGBA arrays), at ``size`` (height, width):
    ``(add, remove)`` — painted pixels whose green channel is at least 128 (:data:`ADD_COLOUR`)
    add, any other painted pixel (:data:`REMOVE_COLOUR`) removes. Later strokes do not undo
    earlier ones: a pixel painted both ways is removed."""
    add, remove = np.zeros(size, bool), np.zeros(size, bool)
    for layer in layers:
        if layer is None:
            continue
        array = np.asarray(layer)
        if array.ndim != 3 or array.shape[2] != 4:
            continue  # a layer without alpha carries no strokes
        if array.shape[:2] != size:
            array = np.asarray(Image.fromarray(array.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST))
        painted = array[..., 3] > 0
        green = array[..., 1] >= 128
        add |= painted & green
        remove |= painted & ~green
    return add, remove


def mask_of(analysis: Analysis, settings: MaskSettings, add: Optional[np.ndarray] = None, remove: Optional[np.ndarray] = None) -> MaskResult:
    """The stage-1 mask: Eq. 9's binary mask at ``settings`` (or empty), ``∪ add ∖ remove``, feathered."""
    if settings.automatic:
        binary = binarize(
            analysis.pq.map,
            analysis.aq.defect_map,
            perceptual_bound=settings.perceptual_bound,
            alignment_bound=settings.alignment_bound,
            dilation=settings.dilation,
            feather=0.0,
        ).binary
    else:
        binary = np.zeros(analysis.size, bool)
    if add is not None:
        binary = binary | add
    if remove is not None:
        binary = binary & ~remove
    return feathered(binary, settings.feather)


def refine_masked(pipeline: GRefinePipeline, analysis: Analysis, mask: MaskResult, settings: RefineSettings) -> GRefineOutput:
    """Refine the analysed image with ``mask`` at the chosen strengths and steps (the pipeline's
    models, a copy of its config; the gate is off: the user asked for this refinement; a
    ``verify`` section runs one round, so that nothing outside the mask is redrawn)."""
    config = copy.deepcopy(pipeline.config)
    config.stage1.min_strength = config.stage1.max_strength = float(settings.strength1)
    config.stage1.steps = int(settings.steps1)
    config.stage2.strength = float(settings.strength2)
    config.stage2.steps = int(settings.steps2)
    config.gate = GateConfig()
    config.verify.rounds = 1  # a later round would draw an Eq. 9 mask of its own, outside the edited one
    edited = GRefinePipeline(pipeline.pq_map, pipeline.aq_map, pipeline.stage1, pipeline.stage2, config, pipeline.select_metric)
    return edited(analysis.image, analysis.prompt, seed=int(settings.seed), mask=mask)


def mask_overlay(image: Image.Image, soft: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """The mask over the image: tinted red where stage 1 redraws, in proportion to the paste-back weight."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = alpha * np.clip(soft, 0.0, 1.0)[..., None]
    tinted = base * (1.0 - weight) + np.asarray(MASK_TINT, np.float32) * weight
    return Image.fromarray(np.clip(tinted + 0.5, 0, 255).astype(np.uint8))


def phrase_rows(aq: AQMapResult) -> list[list[object]]:
    """The phrase table as rows of :data:`PHRASE_HEADERS`."""
    table = phrase_table(aq)["phrases"]
    rows = []
    for index, phrase in enumerate(table):
        ancestor = phrase["ancestor"]
        rows.append(
            [
                phrase["text"],
                phrase["noun"] or "–",
                "itself" if ancestor == index else table[ancestor]["text"],
                _rounded(phrase["score"]),
                _rounded(phrase["noun_score"]),
                DEFECT_LABELS.get(phrase["defect"], phrase["defect"]),
                "yes" if phrase["emphasized"] else "no",
            ]
        )
    return rows


def _rounded(value: Optional[float]) -> object:
    return "–" if value is None else round(value, 4)


def scores_text(analysis: Analysis) -> str:
    """The scores, Eq. 9's strength, the gate's verdict and the stage-1 prompt, as Markdown."""
    verdict = analysis.gate.verdict or "no gate configured"
    return (
        f"**p** = {analysis.pq.score:.4g} (PQ-Map) · **a** = {analysis.aq.score:.4g} (AQ-Map) · "
        f"Eq. 9 stage-1 strength **{analysis.strength1:.3g}** · gate: **{verdict}**"
        + (f" ({analysis.gate.reason})" if analysis.gate.reason else "")
        + f"\n\nstage-1 prompt: `{analysis.aq.emphasized_prompt}`"
    )


def export(folder: Path, analysis: Analysis, mask: MaskResult, output: GRefineOutput) -> list[Path]:
    """Write the refined image, P (and over the image), D, the mask and the phrase table into
    ``folder`` (atomically); returns the paths."""
    files = {
        "refined.png": output.image,
        "pq.png": map_to_image(analysis.pq.map),
        "pq_overlay.png": heatmap_overlay(analysis.image, analysis.pq.map),
        "aq_defect.png": map_to_image(analysis.aq.defect_map),
        "mask.png": map_to_image(mask.soft),
    }
    paths = []
    for name, picture in files.items():
        save_image_atomic(picture, folder / name)
        paths.append(folder / name)
    write_text_atomic(json.dumps(phrase_table(analysis.aq), indent=1, ensure_ascii=False), folder / "phrases.json")
    return paths + [folder / "phrases.json"]


# ------------------------------------------------------------------------------ the page


def build_app(pipeline: GRefinePipeline, workdir: Path, examples: Sequence[tuple[Path, str]] = ()) -> "gradio.Blocks":
    """The Gradio page over :func:`analyze`, :func:`mask_of`, :func:`refine_masked` and
    :func:`export`; downloads are written under ``workdir``. Launch it with :func:`launch`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    config = pipeline.config
    n1, n2 = config.steps

    def settings(start: str, perceptual: float, alignment: float, dilation: float, feather: float) -> MaskSettings:
        return MaskSettings(float(perceptual), float(alignment), float(dilation), float(feather), start == START_AUTOMATIC)

    def layers_of(edited: Optional[dict]) -> list:
        return list((edited or {}).get("layers") or [])

    def current_mask(analysis: Analysis, start, perceptual, alignment, dilation, feather, edited) -> MaskResult:
        add, remove = strokes_of(layers_of(edited), analysis.size)
        return mask_of(analysis, settings(start, perceptual, alignment, dilation, feather), add, remove)

    def editor_value(analysis: Analysis, mask: MaskResult, layers: list) -> dict:
        background = np.asarray(mask_overlay(analysis.image, mask.soft).convert("RGBA"))
        return {"background": background, "layers": layers, "composite": None}

    def on_analyze(image, prompt, start, perceptual, alignment, dilation, feather):
        if image is None:
            raise gr.Error("Upload or pick an image first.")
        try:
            analysis = analyze(pipeline, image, prompt)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        mask = mask_of(analysis, settings(start, perceptual, alignment, dilation, feather))
        return (
            analysis,
            scores_text(analysis),
            heatmap_overlay(analysis.image, analysis.pq.map),
            mask_overlay(analysis.image, analysis.aq.defect_map),
            phrase_rows(analysis.aq),
            gr.update(value=round(analysis.strength1, 3)),
            editor_value(analysis, mask, []),
            mask_overlay(analysis.image, mask.soft),
            f"mask: {100 * mask.coverage:.1f} % of the image",
        )

    def on_settings(analysis, start, perceptual, alignment, dilation, feather, edited):
        if analysis is None:
            return gr.update(), gr.update(), gr.update()
        layers = layers_of(edited)
        automatic = mask_of(analysis, settings(start, perceptual, alignment, dilation, feather))
        mask = current_mask(analysis, start, perceptual, alignment, dilation, feather, edited)
        return editor_value(analysis, automatic, layers), mask_overlay(analysis.image, mask.soft), f"mask: {100 * mask.coverage:.1f} % of the image"

    def on_edit(analysis, start, perceptual, alignment, dilation, feather, edited):
        if analysis is None:
            return gr.update(), gr.update()
        mask = current_mask(analysis, start, perceptual, alignment, dilation, feather, edited)
        return mask_overlay(analysis.image, mask.soft), f"mask: {100 * mask.coverage:.1f} % of the image"

    def on_refine(analysis, start, perceptual, alignment, dilation, feather, edited, strength1, steps1, strength2, steps2, seed, image, prompt):
        if analysis is None or not analysis.matches(image, prompt):
            raise gr.Error("Compute the maps of this image and prompt first.")
        mask = current_mask(analysis, start, perceptual, alignment, dilation, feather, edited)
        output = refine_masked(pipeline, analysis, mask, RefineSettings(strength1, int(steps1), strength2, int(steps2), int(seed or 0)))
        files = export(Path(tempfile.mkdtemp(prefix="refined-", dir=workdir)), analysis, mask, output)
        note = f"stage 1: {output.stage1.steps_run} steps at strength {output.strength1:.3g}; stage 2: {output.stage2_steps} steps"
        note += f" · {output.note}" if output.note else ""
        return (analysis.image, output.image), [str(path) for path in files], note

    with gr.Blocks(title="grefine", analytics_enabled=False) as app:
        analysis_state = gr.State(None)
        gr.Markdown(
            "## grefine · G-Refine on one image\n"
            "1 · upload or pick an image and type its prompt · 2 · **Compute the maps** · 3 · move the settings or paint "
            "on the mask (green adds, black removes) · 4 · **Refine**, compare, download"
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="image", type="pil", image_mode="RGB", sources=["upload", "clipboard"], height=300, elem_id="input-image")
                prompt = gr.Textbox(label="prompt", lines=2, elem_id="prompt")
                analyze_button = gr.Button("Compute the maps", variant="primary", elem_id="analyze")
                if examples:
                    gr.Examples([[str(path), text] for path, text in examples], inputs=[image, prompt], label="or pick an example")
            with gr.Column(scale=2):
                scores = gr.Markdown(elem_id="scores")
                with gr.Row():
                    pq_view = gr.Image(label="PQ-Map P over the image (red = good)", interactive=False, format="png", height=300, elem_id="pq-map")
                    defect_view = gr.Image(label="defect map D over the image", interactive=False, format="png", height=300, elem_id="defect-map")
                phrases = gr.Dataframe(headers=PHRASE_HEADERS, interactive=False, label="phrase table (Eq. 5-7)", elem_id="phrases")
        with gr.Row():
            with gr.Column(scale=1):
                start = gr.Radio([START_AUTOMATIC, START_EMPTY], value=START_AUTOMATIC, label="the mask starts from", elem_id="mask-start")
                perceptual = gr.Slider(0, 1, value=config.mask.perceptual_bound, step=0.01, label="perceptual bound (P below it)", elem_id="perceptual-bound")
                alignment = gr.Slider(0, 1, value=round(config.mask.alignment_bound, 3), step=0.01, label="alignment bound (D above it)", elem_id="alignment-bound")
                dilation = gr.Slider(0, 64, value=config.mask.dilation, step=1, label="dilation (px)", elem_id="dilation")
                feather = gr.Slider(0, 16, value=config.mask.feather, step=0.5, label="feather (px)", elem_id="feather")
                strength1 = gr.Slider(0.05, 1, value=config.stage1.max_strength, step=0.01, label="stage-1 strength (set by Eq. 9 from p and a)", elem_id="strength1")
                steps1 = gr.Slider(1, 50, value=n1, step=1, label="stage-1 steps", elem_id="steps1")
                strength2 = gr.Slider(0, 1, value=config.stage2.strength if pipeline.stage2 is not None else 0, step=0.01, label="stage-2 strength δ (0: stage 2 off)", elem_id="strength2", interactive=pipeline.stage2 is not None)
                steps2 = gr.Slider(1, 50, value=n2, step=1, label="stage-2 steps", elem_id="steps2")
                seed = gr.Number(value=config.seed, precision=0, label="seed", elem_id="seed")
            with gr.Column(scale=2):
                with gr.Row():
                    editor = gr.ImageEditor(
                        label="paint on the mask: green adds, black removes",
                        type="numpy",
                        image_mode="RGBA",
                        sources=[],
                        transforms=[],
                        layers=False,
                        brush=gr.Brush(colors=[ADD_COLOUR, REMOVE_COLOUR], default_color=ADD_COLOUR, color_mode="fixed"),
                        format="png",
                        height=420,
                        elem_id="mask-editor",
                    )
                    mask_view = gr.Image(label="the mask stage 1 will use", interactive=False, format="png", height=420, elem_id="mask-view")
                coverage = gr.Markdown(elem_id="coverage")
                refine_button = gr.Button("Refine", variant="primary", elem_id="refine")
        with gr.Row():
            compare = gr.ImageSlider(label="before | after", type="pil", format="png", max_height=520, elem_id="compare")
            with gr.Column():
                note = gr.Markdown(elem_id="refine-note")
                downloads = gr.File(label="download: the refined image, the maps, the mask, the phrase table", file_count="multiple", elem_id="downloads")

        mask_inputs = [analysis_state, start, perceptual, alignment, dilation, feather]
        image.change(lambda: (None, "Press **Compute the maps** for this image."), outputs=[analysis_state, coverage])
        analyze_button.click(
            on_analyze,
            inputs=[image, prompt, start, perceptual, alignment, dilation, feather],
            outputs=[analysis_state, scores, pq_view, defect_view, phrases, strength1, editor, mask_view, coverage],
        )
        # The mask updates are cheap and must never wait for a slot of the queue: a shared handler
        # (one function behind five controls) left an "always_last" update queued forever.
        for control in (start, perceptual, alignment, dilation, feather):
            control.change(on_settings, inputs=mask_inputs + [editor], outputs=[editor, mask_view, coverage], trigger_mode="always_last", concurrency_limit=None)
        editor.change(on_edit, inputs=mask_inputs + [editor], outputs=[mask_view, coverage], trigger_mode="always_last", concurrency_limit=None)
        refine_button.click(
            on_refine,
            inputs=mask_inputs + [editor, strength1, steps1, strength2, steps2, seed, image, prompt],
            outputs=[compare, downloads, note],
        )
    return app


def launch(app: "gradio.Blocks", port: int, workdir: Path) -> str:
    """Start serving ``app`` on 127.0.0.1:``port`` (no share link, no server-side rendering) and
    return its URL; ``app.block_thread()`` then serves until interrupted."""
    import gradio as gr

    _, url, _ = app.launch(
        server_name="127.0.0.1",
        server_port=port,
        share=False,
        ssr_mode=False,
        inbrowser=False,
        show_error=True,
        allowed_paths=[str(workdir)],
        footer_links=["settings"],
        theme=gr.themes.Default(),
        prevent_thread_lock=True,
        quiet=True,
    )
    return url
