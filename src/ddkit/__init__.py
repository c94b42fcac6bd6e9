"""ddkit: dataset distillation, its evaluation and its audit.

Public API::

    real = ddkit.load_dataset("fashion-mnist")
    syn = ddkit.distill(real, method="dm", ipc=10, iterations=200)
    syn.save("fmnist_dm_ipc10.safetensors")
    result = ddkit.evaluate(syn, runs=5)
"""

from ddkit.api import distill  # noqa: E402
from ddkit.artifact import DistilledSet  # noqa: E402
from ddkit.data import ImageDataset, load_dataset  # noqa: E402
from ddkit.errors import DDKitError  # noqa: E402
from ddkit.evaluate import EvalResult, evaluate, train_networks  # noqa: E402
from ddkit.models import get_model  # noqa: E402
from ddkit.version import __version__  # noqa: E402

__all__ = [
    "DDKitError", "DistilledSet", "EvalResult", "ImageDataset", "distill", "evaluate",
    "get_model", "load_dataset", "train_networks", "__version__",
]
