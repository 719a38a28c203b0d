"""Evaluation: routing metrics (a registry by name), the comparison harness, plots."""
from .harness import EvalResult, RouterSpec, evaluate, format_table, parse_router_list
from .metrics import METRICS, register_metric

__all__ = ["EvalResult", "METRICS", "RouterSpec", "evaluate", "format_table",
           "parse_router_list", "register_metric"]
