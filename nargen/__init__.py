"""nargen: parallel and latent-variable sequence generation on one transformer core."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``nargen.load_module`` without importing Lightning until it is used."""
    if name == "load_module":
        from nargen.models import load_module

        return load_module
    raise AttributeError(f"module 'nargen' has no attribute {name!r}")
