"""interest-stream: streaming, real-time user-interest updater for recommender systems."""

__version__ = "0.4.1"
