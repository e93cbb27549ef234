"""grefine: G-Refine, a general quality refiner for text-to-image generation."""
__version__ = "0.1.0"
