"""The trust audit of distilled sets (``ddkit audit``, :func:`ddkit.audit.report.audit`).

:mod:`ddkit.audit.mia` (membership-inference scoring: threshold attack, LiRA, metrics),
:mod:`ddkit.audit.privacy` (the audit split and the attacks on a set's networks),
:mod:`ddkit.audit.robustness` (adversarial accuracy with torchattacks, common corruptions
with imagecorruptions-imaug), :mod:`ddkit.audit.fairness` (per-class figures),
:mod:`ddkit.audit.report` (all parts beside the baselines; JSON and HTML). The biased
datasets are not built yet.
"""

from ddkit.audit.mia import MIAMetrics, attack_metrics, lira_offline, lira_online, logit_confidence

__all__ = ["MIAMetrics", "attack_metrics", "lira_offline", "lira_online", "logit_confidence"]
