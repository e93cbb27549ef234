"""Packaging for grefine: G-Refine, a general quality refiner for text-to-image generation."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # torch / torchvision are pinned as a pair: it is the pair whose CPU import works together.
    "torch==2.14.1",
    "torchvision==0.29.1",
    "open_clip_torch>=2.24",
    "diffusers>=0.30",
    "transformers>=4.40",
    "accelerate>=0.30",
    "nltk>=3.9",
    # prompt weighting of Eq. 7's emphasis for SDXL's two text encoders.
    "compel>=2.5",
    "pyiqa>=0.1.13",
    "timm",  # pyiqa's backbones; grefine names the files TOPIQ's reads (grefine.eval.metric_weights)
    "numpy",
    "pillow",
    "pyyaml",
    "tqdm",
    "psutil",  # the output-folder lock tells a live owner from a reused process id
    "scikit-image",
    "scipy",  # correlations, the logistic fit, mask morphology
    "matplotlib",  # scatter, gate and training-log plots
    "openpyxl",  # .xlsx label tables (AGIQA-1K, AIGIQA-20K, training data)
    # pyiqa's CLIP-based metrics (clipiqa, liqe, clipscore) import pkg_resources, gone from setuptools 81.
    "setuptools<81",
    # pyiqa's Q-Align imports icecream.
    "icecream",
    # The benchmark's database metadata (CSV / XLSX / Parquet) and its charts.
    "pandas",
    "pyarrow",
    "openpyxl",
    "matplotlib",
]

# The interactive app (scripts/app.py, grefine.app): Gradio 6's components and launch options.
APP_REQUIRES = ["gradio>=6,<7"]
# The tests drive report.html and the app in Debian's chromium (apt-get install chromium chromium-driver).
TEST_REQUIRES = ["pytest>=7", "pytest-timeout", "selenium>=4.20", *APP_REQUIRES]

setup(
    name="grefine",
    version="0.1.0",
    description="G-Refine: perceptual/alignment quality maps and a two-stage quality refiner for AI-generated images",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["grefine", "grefine.*"]),
    package_data={"grefine": ["py.typed", "run/report_assets/*.css", "run/report_assets/*.js"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "app": APP_REQUIRES},
)
