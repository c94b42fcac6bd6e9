"""Distillation methods: the registry and the top-level :func:`distill`."""

from ddkit.distill import cfm, coreset, dm, frepo, gm, kip, mtt, spectral  # noqa: F401  (registers the methods)
from ddkit.distill.base import METHODS, Distiller, MethodConfig, get_method, make_config, register

__all__ = ["METHODS", "Distiller", "MethodConfig", "get_method", "make_config", "register"]
