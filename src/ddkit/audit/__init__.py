"""The trust audit of distilled sets: its parts, as library functions.

:mod:`ddkit.audit.mia` (membership-inference scoring: threshold attack, LiRA, metrics),
:mod:`ddkit.audit.robustness` (adversarial accuracy with torchattacks, common corruptions
with imagecorruptions-imaug), :mod:`ddkit.audit.fairness` (per-class figures). The
``ddkit audit`` command that runs them on a set against its baselines and writes the
report, the audit split for membership inference, and the biased datasets are not built yet.
"""

from ddkit.audit.mia import MIAMetrics, attack_metrics, lira_offline, lira_online, logit_confidence

__all__ = ["MIAMetrics", "attack_metrics", "lira_offline", "lira_online", "logit_confidence"]
