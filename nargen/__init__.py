"""nargen: parallel and latent-variable sequence generation on one transformer core."""

__version__ = "0.1.0"
