"""A spend budget per time window, enforced online with the batch budget policy's dual price.

Batch routing (``capsat route --policy budget:B``) knows the whole log: it solves the one dual
price LAMBDA* whose tradeoff choice (argmax P - LAMBDA * cost) spends at most B
(``policies.solve_budget``). A server sees requests one at a time, so it solves the same
problem over a moving sample of the future:

- Windows are tumbling: ``budget`` per ``window`` seconds, counted from the server's start.
  The *remaining* budget is the budget, less what finished calls of this window cost (their
  real cost, from the backend's token usage where prices are per token), less the expected
  cost of calls still in flight (reserved at the decision, settled when the call ends).
- The *allowance* of one request is the remaining budget over the requests expected in the
  rest of the window (the recent request rate times the time left, at least 1).
- The dual price is the smallest LAMBDA at which the tradeoff choice on the last ``memory``
  requests' probabilities and costs would have spent no more than the allowance per request:
  ``solve_budget`` on those rows, re-solved at every request. Spending faster than the budget
  allows shrinks the remaining budget and so raises the price; a quiet spell lowers it.
- A request's choice is its policy's, unless the budget's choice at LAMBDA is cheaper (the
  budget only ever makes a choice cheaper; for max-accuracy and tradeoff:L it is the tradeoff
  choice at max(L, LAMBDA)).
- When the remaining budget cannot pay for even the cheapest candidate, the request is
  refused (HTTP 429 with Retry-After: the seconds to the next window).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..routing.policies import solve_budget, tradeoff_choice

DEFAULT_MEMORY = 256


@dataclass
class BudgetState:
    dual_price: float
    remaining: float
    allowance: float
    window_ends_in: float


class SpendBudget:
    def __init__(self, budget: float, window: float, *, memory: int = DEFAULT_MEMORY,
                 clock=time.monotonic):
        self.budget, self.window, self.clock = float(budget), float(window), clock
        self.start = clock()
        self.window_index = 0
        self.spent = 0.0  # finished calls of this window
        self.total_spent = 0.0
        self.reserved: dict[str, float] = {}  # in-flight calls: request id -> expected cost
        self.recent: deque = deque(maxlen=memory)  # (time, probs row, costs row)
        self.dual_price = 0.0

    def _roll(self, now: float) -> None:
        index = int((now - self.start) // self.window)
        if index != self.window_index:
            self.window_index, self.spent = index, 0.0

    def ends_in(self, now: float) -> float:
        return self.start + (self.window_index + 1) * self.window - now

    def remaining(self, now: float | None = None) -> float:
        self._roll(self.clock() if now is None else now)
        return self.budget - self.spent - sum(self.reserved.values())

    def price(self, probs: np.ndarray, costs: np.ndarray) -> BudgetState:
        """The dual price for a request with these candidate probabilities and costs."""
        now = self.clock()
        self._roll(now)
        self.recent.append((now, np.asarray(probs, float), np.asarray(costs, float)))
        remaining = self.remaining(now)
        times = [t for t, _, _ in self.recent]
        span = times[-1] - times[0]
        rate = (len(times) - 1) / span if span > 0 else 0.0
        expected = max(1.0, rate * self.ends_in(now))
        allowance = max(remaining, 0.0) / expected
        probs_rows = np.stack([p for _, p, _ in self.recent])
        cost_rows = np.stack([c for _, _, c in self.recent])
        rows = np.arange(len(cost_rows))

        def spend_at(lam: float) -> float:
            return float(cost_rows[rows, tradeoff_choice(probs_rows, cost_rows, lam)].sum())

        spread = float(np.ptp(cost_rows)) or 1.0
        self.dual_price = solve_budget(spend_at, allowance * len(rows), spread).lam
        return BudgetState(self.dual_price, remaining, allowance, self.ends_in(now))

    def affordable(self, costs: np.ndarray) -> bool:
        return self.remaining() >= float(np.min(costs))

    def reserve(self, request_id: str, expected_cost: float) -> None:
        self.reserved[request_id] = float(expected_cost)

    def settle(self, request_id: str, cost: float) -> None:
        """The call ended: its real cost replaces its reservation (0 when it failed)."""
        self.reserved.pop(request_id, None)
        self._roll(self.clock())
        self.spent += cost
        self.total_spent += cost
