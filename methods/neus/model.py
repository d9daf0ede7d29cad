"""NeuS / VolSDF model: it lives in :mod:`recon.sdf_model` (the SDF backend that other surface
methods, such as objectsdf, build on); re-exported here for the ``neus`` plugin."""

from recon.sdf_model import NeuSModel, NeuSModelConfig

__all__ = ["NeuSModel", "NeuSModelConfig"]
