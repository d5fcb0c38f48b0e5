"""torchrec_onerec: OneRec (arXiv 2502.18965), Kuaishou's generative recommender, as a TorchRec plugin."""

__version__ = "0.1.0"
