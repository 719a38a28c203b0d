"""Turn real benchmark outcomes into routing data: outcome tables, splits, aptitude tests,
capability instructions and cached query embeddings. Nothing here imports ``capsat``."""
from .errors import DataError
from .outcomes import OutcomeTable

__all__ = ["DataError", "OutcomeTable"]
