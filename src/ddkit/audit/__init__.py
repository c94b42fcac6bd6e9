"""The trust audit of distilled sets (privacy first: membership-inference scoring).

The full ``ddkit audit`` command (robustness, fairness, biased data, the HTML report) is
not built yet; :mod:`ddkit.audit.mia` holds the membership-inference scoring it will use.
"""

from ddkit.audit.mia import MIAMetrics, attack_metrics, lira_offline, lira_online, logit_confidence

__all__ = ["MIAMetrics", "attack_metrics", "lira_offline", "lira_online", "logit_confidence"]
