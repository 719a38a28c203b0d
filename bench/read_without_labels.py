"""Saved CapSAT routers on a query split's test part (MMLU-Pro by default), read with and
without the queries' task labels: what a log without labels gets, beside the labelled figures
of `capsat eval`. A router that saw any test query is refused, as `capsat eval` refuses it.

    python bench/read_without_labels.py --seed 0 --out bench/results/X.json ROUTER_DIR [ROUTER_DIR ...]

Writes one row per (router, labelled): routed accuracy, query AUC, pooled AUC and the three
models it sends most queries to.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("routers", nargs="+", help="saved CapSAT router folders")
    parser.add_argument("--data", default="mmlu_pro", help="a shipped data set or an outcome file")
    parser.add_argument("--seed", type=int, default=0, help="the query split's seed")
    parser.add_argument("--out", required=True, help="JSON file to write (atomically)")
    args = parser.parse_args(argv)

    from capsat.capsat_model.router import CapsatRouter
    from capsat.evaluation import metrics as M
    from capsat.routers import Queries
    from capsat.routers.provenance import refusal
    from data_builders.atomic import write_json
    from data_builders.embeddings import Embedder
    from data_builders.experiment import prepare_experiment

    _, _, test = prepare_experiment(args.data, "query", seed=args.seed).parts()
    embeddings, rows = None, []
    for path in args.routers:
        router = CapsatRouter.load(path)
        router.progress = False
        why = refusal(router, test.query_ids, test.texts, what="the test queries")
        if why:
            raise ValueError(f"{path} {why}")
        if embeddings is None:
            embeddings = Embedder(router.config.capability_encoder).encode(test.texts)
        unknown = sorted(set(router.models) - set(test.scores.columns))
        if unknown:
            raise KeyError(f"{path}: models {unknown} have no scores in {args.data}")
        models = list(router.models)
        scores = test.scores[models].to_numpy(dtype=float)
        for labelled in (True, False):
            queries = Queries(test.texts, test.query_ids, test.tasks if labelled else None,
                              embeddings)
            probs = router.predict_proba(queries, models)
            share = np.bincount(M.chosen(probs), minlength=len(models)) / len(probs)
            rows.append({"router": path, "labelled": labelled,
                         "routed_accuracy": M.routed_accuracy(probs, scores),
                         "query_auc": M.query_auc(probs, scores), "auc": M.auc(probs, scores),
                         "top_shares": {models[j]: float(share[j])
                                        for j in np.argsort(-share)[:3]}})
            print(rows[-1], flush=True)
    write_json(args.out, {"data": str(args.data), "seed": args.seed, "test_queries": len(test),
                          "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
