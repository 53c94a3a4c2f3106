"""heatedasc: heated-up softmax + spectrum correction for mismatched-device acoustic scene classification."""

__version__ = "0.1.0"
