"""Metrics of generated data: pure functions and torchmetrics-style stateful metrics."""
