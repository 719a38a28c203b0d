"""Turn ``--router`` into a Router: a saved directory, a hub id (CapSAT), or a classic router
name fitted here on outcome data. Only the Router interface is used afterwards."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from data_builders.errors import DataError
from data_builders.experiment import prepare_experiment
from data_builders.outcomes import OutcomeTable

from ..hub import HUB_ID, looks_like_a_path
from ..routers import ROUTERS, Router, get_router_class
from ..routers.base import ROUTER_FILE

FIT_PARTS = ("train", "all")


@dataclass
class Resolved:
    router: Router
    kind: str  # "saved", "hub" or "fitted"
    fit_table: OutcomeTable | None = None  # the rows the router was fitted on (fitted here)
    fit_info: dict | None = None


def fit_tables(data: str | OutcomeTable, fit_part: str, seed: int, *,
               models: Sequence[str] | None = None, test_size: float = 0.2,
               validation_size: float = 0.1) -> tuple[OutcomeTable, OutcomeTable, dict]:
    """(fit, validation, info) from the query split of ``data`` (``prepare_experiment``):
    ``train`` fits on the train part only, so a log built from the test part is honest; ``all``
    also fits on the test part (realised figures on that part are then in-sample).
    Hyper-parameters are always chosen on the validation part."""
    if fit_part not in FIT_PARTS:
        raise DataError(f"unknown fit part {fit_part!r}; known: {list(FIT_PARTS)}",
                        field="fit_part")
    experiment = prepare_experiment(data, "query", models=models, seed=seed,
                                    test_size=test_size, validation_size=validation_size)
    split = experiment.split
    fit_ids = list(split.train) + (list(split.test) if fit_part == "all" else [])
    info = {"data": experiment.table.name, "fit_part": fit_part, "seed": seed,
            "fit_queries": len(fit_ids), "validation_queries": len(split.validation),
            "test_queries": len(split.test), "test_part_held_out": fit_part == "train",
            "notes": experiment.notes}
    table = experiment.table
    return table.subset(fit_ids), table.subset(list(split.validation)), info


def resolve_router(spec: str, *, fit_data: str | None = None, fit_part: str = "train",
                   seed: int = 0, candidates: Sequence[str] | None = None,
                   progress: bool = True) -> Resolved:
    """``spec``: a saved router directory, a classic router name (fitted on ``fit_data``), or
    a hub id / "default" (CapSAT, via ``from_pretrained``)."""
    path = Path(spec)
    if path.is_dir():
        if not (path / ROUTER_FILE).exists():
            raise DataError(f"not a saved router (no {ROUTER_FILE})", file=str(path))
        return Resolved(Router.load(path), "saved")
    if spec in ROUTERS:
        entry = ROUTERS[spec]
        if entry.trained_with:
            raise DataError(f"a {spec} router is made with `{entry.trained_with}`, not fitted "
                            f"here: pass its directory, 'default' or a hub id", field="router")
        klass = get_router_class(spec)
        if klass.cheats:
            raise DataError(f"{spec!r} reads the labels of the queries it routes; it cannot "
                            f"route a log", field="router")
        if klass.needs_responses:
            raise DataError(f"{spec!r} scores the candidates' own responses, which a log of "
                            f"instructions does not have", field="router")
        if fit_data is None:
            raise DataError(f"router {spec!r} is a name: give --fit-data (a data set name or "
                            f"outcome file) to fit it on, or pass a saved router directory",
                            field="fit_data")
        fit, validation, info = fit_tables(fit_data, fit_part, seed, models=candidates)
        router = klass()
        router.progress = progress  # its own bars (embedding) while fitting too
        router.fit(fit, validation, split="query" if fit_part == "train" else None, seed=seed)
        return Resolved(router, "fitted", fit, info)
    if path.exists():
        raise DataError("not a router directory", file=str(path))
    if spec != "default" and looks_like_a_path(spec):
        raise DataError("no such router folder", file=spec)
    if not HUB_ID.match(spec) and spec != "default":
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
