"""The field's evaluation protocols for distilled sets: hard-label (DC/DSA/DM) and soft-label (RDED/CFM)."""

from ddkit.evaluate.protocol import EvalResult, evaluate
from ddkit.evaluate.soft import SoftLabelConfig, train_student_soft

__all__ = ["EvalResult", "SoftLabelConfig", "evaluate", "train_student_soft"]
