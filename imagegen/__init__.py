"""imagegen: build, test, audit and publish deep-learning framework images from one matrix.yaml."""

__version__ = "0.1.0"
