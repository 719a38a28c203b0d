"""Turn ``--router`` into a Router: a saved directory, a hub id (CapSAT), or a classic router
name fitted here on outcome data. Only the Router interface is used afterwards."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from data_builders.errors import DataError
from data_builders.outcomes import OutcomeTable
from data_builders.splits import make_split

from ..routers import ROUTERS, Router, get_router_class
from ..routers.base import ROUTER_FILE

FIT_PARTS = ("all", "train")


@dataclass
class Resolved:
    router: Router
    kind: str  # "saved", "hub" or "fitted"
    fit_table: OutcomeTable | None = None  # the rows the router was fitted on (fitted here)
    fit_info: dict | None = None


def fit_tables(table: OutcomeTable, fit_part: str, seed: int, test_size: float = 0.2,
               validation_size: float = 0.1
               ) -> tuple[OutcomeTable, OutcomeTable, dict]:
    """(fit, validation, info) from a query split of ``table``: ``train`` fits on the train part
    only (so a log built from the test part is honest); ``all`` also fits on the test part.
    Hyper-parameters are always chosen on the validation part."""
    if fit_part not in FIT_PARTS:
        raise DataError(f"unknown fit part {fit_part!r}; known: {list(FIT_PARTS)}",
                        field="fit_part")
    split = make_split(table, "query", test_size=test_size, validation_size=validation_size,
                       seed=seed)
    fit_ids = list(split.train) + (list(split.test) if fit_part == "all" else [])
    info = {"fit_part": fit_part, "seed": seed, "fit_queries": len(fit_ids),
            "validation_queries": len(split.validation), "test_queries": len(split.test),
            "test_query_ids_held_out": fit_part == "train"}
    return table.subset(fit_ids), table.subset(list(split.validation)), info


def resolve_router(spec: str, *, fit_data: str | None = None, fit_part: str = "all",
                   seed: int = 0, candidates: Sequence[str] | None = None) -> Resolved:
    """``spec``: a saved router directory, a classic router name (fitted on ``fit_data``), or
    a hub id / "default" (CapSAT, via ``from_pretrained``)."""
    path = Path(spec)
    if path.is_dir():
        if not (path / ROUTER_FILE).exists():
            raise DataError(f"not a saved router (no {ROUTER_FILE})", file=str(path))
        return Resolved(Router.load(path), "saved")
    if spec in ROUTERS:
        klass = get_router_class(spec)
        if klass.cheats:
            raise DataError(f"{spec!r} reads the labels of the queries it routes; it cannot "
                            f"route a log", field="router")
        if klass.needs_responses:
            raise DataError(f"{spec!r} scores the candidates' own responses, which a log of "
                            f"instructions does not have", field="router")
        if klass.name == "capsat":
            raise DataError("a CapSAT router is loaded, not fitted here: pass its directory or "
                            "hub id", field="router")
        if fit_data is None:
            raise DataError(f"router {spec!r} is a name: give --fit-data (a data set name or "
                            f"outcome file) to fit it on, or pass a saved router directory",
                            field="fit_data")
        from ..evaluation.harness import prepare_table

        table, notes = prepare_table(fit_data, models=candidates)
        fit, validation, info = fit_tables(table, fit_part, seed)
        info.update({"data": table.name, "notes": notes})
        router = klass().fit(fit, validation)
        return Resolved(router, "fitted", fit, info)
    if path.exists():
        raise DataError("not a router directory", file=str(path))
    if "/" not in spec and spec != "default":
        raise DataError(f"unknown router {spec!r}: not a directory, not a registered name "
                        f"({', '.join(sorted(ROUTERS))}), not a hub id (owner/name)",
                        field="router")
    from ..capsat_model.router import CapsatRouter

    try:
        return Resolved(CapsatRouter.from_pretrained(spec), "hub")
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - hub errors come in many types; say what failed
        raise DataError(f"could not load {spec!r} as a CapSAT router from the hub "
                        f"({type(err).__name__}: {err}); without network access, download it "
                        f"first and pass the directory", field="router") from err
