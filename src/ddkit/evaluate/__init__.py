"""The field's evaluation protocols for distilled sets: the methods' own hard-label protocols
(DC, DSA/DM/MTT, FRePo, RFAD) and soft-label (RDED/CFM).

Nothing here imports a distillation method: what evaluation needs from a set (its label
kind, learned learning rate, shipped teacher) is in the set itself (:mod:`ddkit.artifact`,
:mod:`ddkit.teacher`).
"""

from ddkit.evaluate.cross import CrossArchResult, evaluate_models
from ddkit.evaluate.protocol import EvalConfig, EvalResult, TrainedNetworks, evaluate, train_networks
from ddkit.evaluate.soft import SoftLabelConfig

__all__ = ["CrossArchResult", "EvalConfig", "EvalResult", "SoftLabelConfig", "TrainedNetworks", "evaluate",
           "evaluate_models", "train_networks"]
