"""Lightning callbacks: global aggregation (the cloud tier), evaluation, checkpoints."""

from callbacks.aggregation import GlobalAggregation
from callbacks.checkpoint import RoundCheckpoint
from callbacks.generation_metrics import GenerationMetrics
from callbacks.grid_metrics import GaussianGridMetrics
from callbacks.progress import FederationProgressBar, PlainProgress

__all__ = ["FederationProgressBar", "GlobalAggregation", "GaussianGridMetrics", "GenerationMetrics", "PlainProgress",
           "RoundCheckpoint"]
