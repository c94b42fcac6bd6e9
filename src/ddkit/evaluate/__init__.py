"""The field's evaluation protocol for distilled sets."""

from ddkit.evaluate.protocol import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
