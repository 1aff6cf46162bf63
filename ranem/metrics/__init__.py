"""Faithfulness (insertion/deletion curves, AUC, Monte-Carlo AUC) and the evaluation suite.

Each concept lives in its own submodule; everything public is re-exported here, so that
``ranem.metrics.insertion_curve`` and ``ranem.metrics.avg_sensitivity`` both work.
"""
from ranem.metrics.curves import *  # noqa: F401,F403
from ranem.metrics.robustness import *  # noqa: F401,F403
from ranem.metrics.stats import *  # noqa: F401,F403
from ranem.metrics.localisation import *  # noqa: F401,F403
from ranem.metrics.spread import *  # noqa: F401,F403
