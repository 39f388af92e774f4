"""Random-bases descent (Gressmann et al., NeurIPS 2020) for PyTorch."""

__version__ = "0.1.0"
