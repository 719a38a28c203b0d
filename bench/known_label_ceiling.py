"""How far a new-model split's pooled AUC can rise above the aptitude prior, from what the
query embedding carries: classic routers fitted on the train queries *with the held-out
models' labels* (as if they were known models), scored on the same test rows as the
aptitude prior onboarded from the aptitude items alone. A reference, never a router: it reads
labels that no onboarding router may read, and it chooses nothing.

    python bench/known_label_ceiling.py --data llmrouter --split model --seed 0 --out X.json
    python bench/known_label_ceiling.py --split family --held_out gemini --out X.json

Writes, per router and for the aptitude prior at each size: pooled AUC, query AUC and routed
accuracy on the held-out models; per size, each router's pooled AUC and routed accuracy minus
the prior's, with paired bootstrap 95% intervals over the test queries.
"""
from __future__ import annotations

import argparse
import sys

KNOWN_LABEL_ROUTERS = ["knn", "irt", "mf", "multilabel", "kmeans"]
PRIOR = "aptitude_prior"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mmlu_pro", help="a shipped data set or outcome file")
    parser.add_argument("--split", required=True, choices=["model", "family"])
    parser.add_argument("--seed", type=int, default=0, help="the split's seed")
    parser.add_argument("--held_out", nargs="*", default=None, help="families to hold out")
    parser.add_argument("--test_size", type=float, default=0.2, help="as `capsat eval`")
    parser.add_argument("--aptitude-items", default="140", dest="aptitude_items",
                        help="comma-separated aptitude test sizes, each with its own prior")
    parser.add_argument("--routers", nargs="+", default=KNOWN_LABEL_ROUTERS,
                        help="routers fitted with the held-out models' train labels")
    parser.add_argument("--out", required=True, help="JSON file to write (atomically)")
    args = parser.parse_args(argv)

    from capsat.evaluation import metrics as M
    from capsat.evaluation.compare import paired_auc_bootstrap, paired_bootstrap
    from capsat.evaluation.harness import _embed_parts
    from capsat.routers import Queries, get_router_class
    from data_builders.atomic import write_json
    from data_builders.embeddings import DEFAULT_ENCODER
    from data_builders.experiment import prepare_experiment

    sizes = [int(v) for v in str(args.aptitude_items).split(",")]
    experiments = [prepare_experiment(args.data, args.split, seed=args.seed,
                                      held_out=args.held_out, test_size=args.test_size,
                                      aptitude_items=n) for n in sizes]
    split, table = experiments[0].split, experiments[0].table
    if any(e.split != split for e in experiments):
        raise ValueError("the aptitude test's size changed the split: the priors would be "
                         "read on other rows")
    train, validation, test = experiments[0].parts()
    held_out = list(split.test_models)
    everyone = list(split.train_models) + held_out
    embeddings = _embed_parts({"train": train, "validation": validation, "test": test},
                              DEFAULT_ENCODER)
    queries = Queries.from_table(test, embeddings["test"])
    scores = test.scores[held_out].to_numpy(dtype=float)
    right = scores >= M.CORRECT_AT

    def picked(probs):
        return scores[range(len(scores)), M.chosen(probs)].tolist()

    def figures(probs) -> dict:
        return {"auc": M.auc(probs, scores), "query_auc": M.query_auc(probs, scores),
                "routed_accuracy": M.routed_accuracy(probs, scores)}

    known = {}
    for name in args.routers:
        router = get_router_class(name)().fit(
            table.subset(list(split.train), everyone),
            table.subset(list(split.validation), everyone), embeddings, split="query",
            seed=args.seed)
        known[name] = router.predict_proba(queries, held_out)
    priors = {}
    for n, experiment in zip(sizes, experiments):
        prior = get_router_class(PRIOR)().fit(train, validation, embeddings, split=args.split,
                                              seed=args.seed, aptitude=experiment.aptitude)
        scope = prior.takes_aptitude(experiment.aptitude)
        for model, results in experiment.aptitude_results(held_out).items():
            prior.onboard(model, results, replace=model in prior.models, scope=scope)
        probs = prior.predict_proba(queries, held_out)
        priors[str(n)] = {**figures(probs), "versus": {
            name: {"auc_minus_prior": paired_auc_bootstrap(other, probs, right, seed=args.seed),
                   "routed_minus_prior": paired_bootstrap(picked(other), picked(probs),
                                                          seed=args.seed)}
            for name, other in known.items()}}
        print(f"{PRIOR} ({n} items)", {k: v for k, v in priors[str(n)].items()
                                        if k != "versus"}, flush=True)
    rows = {name: figures(probs) for name, probs in known.items()}
    for name, row in rows.items():
        print(name, row, flush=True)
    write_json(args.out, {"data": str(args.data), "split": args.split, "seed": args.seed,
                          "held_out_models": held_out,
                          "held_out_families": list(split.held_out_families),
                          "test_queries": len(test), "known_label_routers": rows,
                          "aptitude_prior": priors}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
