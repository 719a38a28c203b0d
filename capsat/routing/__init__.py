"""Batch routing over instruction logs: streaming, resumable, cost-aware, scaled out.

``run_route(RouteConfig(...))`` is ``capsat route``; ``frontier(...)`` is ``capsat frontier``.
Routers are used only through the Router interface (``predict_proba``).
"""
from .frontier import frontier, plot_frontier
from .io import BadRow, Row, RowSpec, detect_format, iter_raw, last_user_turn, parse_row
from .job import RouteConfig, errors_path_of, run_route, summary_path_of, work_dir_of
from .policies import Policy, choose, solve_budget, threshold_choice, tradeoff_choice
from .prices import Prices
from .resolve import resolve_router
from .summary import JobSummary

__all__ = ["BadRow", "JobSummary", "Policy", "Prices", "RouteConfig", "Row", "RowSpec", "choose",
           "detect_format", "errors_path_of", "frontier", "iter_raw", "last_user_turn",
           "parse_row", "plot_frontier", "resolve_router", "run_route", "solve_budget",
           "summary_path_of", "threshold_choice", "tradeoff_choice", "work_dir_of"]
