"""Adaptive distillation via a GAN.

- ``WeightGenerator`` (G): a VAE whose decoder writes per-input student weights;
- ``AdaptiveStudent``: G plus the student, run functionally and vectorised over the batch;
- ``MultiHeadDiscriminator`` (D): output, weights and complexity heads;
- ``AdaptivePipeline``: inference with calibration, monitoring and export.

Train it as the strategy ``adaptive`` (``strategies/adaptive.py``).
"""

from distillab.adaptive.discriminator import MultiHeadDiscriminator
from distillab.adaptive.generator import WeightGenerator
from distillab.adaptive.pipeline import AdaptivePipeline, PipelineConfig
from distillab.adaptive.student import AdaptiveStudent

__all__ = ["AdaptivePipeline", "AdaptiveStudent", "MultiHeadDiscriminator", "PipelineConfig", "WeightGenerator"]
