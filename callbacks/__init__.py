"""Lightning callbacks: global aggregation, evaluation, checkpoints."""

from callbacks.aggregation import GlobalAggregation
from callbacks.checkpoint import RoundCheckpoint
from callbacks.grid_metrics import GaussianGridMetrics

__all__ = ["GlobalAggregation", "GaussianGridMetrics", "RoundCheckpoint"]
