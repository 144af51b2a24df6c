from .metrics import METRICS, get_metric, register_metric
from .ranking import FullRankingEvaluator

__all__ = ["FullRankingEvaluator", "METRICS", "get_metric", "register_metric"]
