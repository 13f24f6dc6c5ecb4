"""Lightning callbacks: global aggregation, evaluation, checkpoints."""

from callbacks.aggregation import GlobalAggregation
from callbacks.checkpoint import RoundCheckpoint
from callbacks.grid_metrics import GaussianGridMetrics
from callbacks.image_samples import ImageSamples

__all__ = ["GlobalAggregation", "GaussianGridMetrics", "ImageSamples", "RoundCheckpoint"]
