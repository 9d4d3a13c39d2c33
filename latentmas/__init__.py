"""latentmas: exact, reproducible latent multi-agent collaboration (LatentMAS, arXiv 2511.20639)."""
__version__ = "0.1.0"
