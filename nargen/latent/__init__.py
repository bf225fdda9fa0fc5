"""Discrete latents: vector quantization with EMA codebooks."""

from nargen.latent.quantizer import Quantized, QuantizerConfig, VectorQuantizer, kmeans

__all__ = ["Quantized", "QuantizerConfig", "VectorQuantizer", "kmeans"]
