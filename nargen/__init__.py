"""nargen: parallel and latent-variable sequence generation on one transformer core."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``nargen.Translator`` and ``nargen.load_module``, imported (with Lightning) on first use."""
    if name == "load_module":
        from nargen.models import load_module

        return load_module
    if name in ("Translator", "TranslatedLine"):
        from nargen import api

        return getattr(api, name)
    raise AttributeError(f"module 'nargen' has no attribute {name!r}")
