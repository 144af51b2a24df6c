from .metrics import METRICS, get_metric, register_metric
from .ranking import Evaluation, FullRankingEvaluator

__all__ = ["Evaluation", "FullRankingEvaluator", "METRICS", "get_metric", "register_metric"]
