"""Distillation methods: the registry, the loop and the top-level :func:`distill`.

Importing this package registers the built-in methods (in this order: ``random``,
``herding``, ``dm``, ``spectral``, ``dc``, ``dsa``, ``kip``, ``frepo``, ``mtt``, ``cfm``).
"""

from ddkit.distill import coreset, dm, spectral, gm, kip, frepo, mtt, cfm  # noqa: F401, I001  (registers the methods)
from ddkit.distill.base import (
    METHODS,
    Distiller,
    LoopState,
    MethodConfig,
    RunContext,
    SetParts,
    StepEvent,
    get_method,
    list_methods,
    make_config,
    register,
)

__all__ = ["METHODS", "Distiller", "LoopState", "MethodConfig", "RunContext", "SetParts", "StepEvent", "get_method",
           "list_methods", "make_config", "register"]
