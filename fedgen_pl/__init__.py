"""fedgen-pl: federated generative models for heterogeneous IoT data, in PyTorch Lightning."""

__version__ = "0.1.0"
