"""What a trained checkpoint adds to step 0, query split: its change of the direct logit split
into a query-level part (the mean over the query's candidates: it moves pooled AUC and
log-loss, never routing) and the candidate-level rest, scaled by alpha. Each variant gets the
difficulty weight of lowest validation log-loss from the recipe's grid, as training gives
the kept router; figures on validation and on the test part.

    python bench/trained_step_parts.py --checkpoint RUN/train/checkpoints/step-0001500 \\
        --out X.json -- --config train/recipes/cpu_default.yaml --data llmrouter \\
        --use_llm false --llm_steps 0 --output_dir /tmp/parts

The arguments after ``--`` are the run's training arguments (the same data, split, seed and
recipe): step 0 is rebuilt from them as training builds it (task head, then the start).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

#: (name, query-level share, candidate-level share) of the trained change kept.
VARIANTS = [("step 0", 0.0, 0.0), ("trained", 1.0, 1.0), ("query-level part only", 1.0, 0.0),
            ("query-level + 1/4 candidate-level", 1.0, 0.25),
            ("query-level + 1/2 candidate-level", 1.0, 0.5)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, train_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoints/step-* folder")
    parser.add_argument("--out", required=True, help="JSON file to write (atomically)")
    args = parser.parse_args(ours)

    from safetensors.torch import load_file
    from scipy.special import logit

    from capsat.evaluation import metrics as M
    from capsat.routers import Queries
    from data_builders.atomic import write_json
    from data_builders.embeddings import Embedder
    from data_builders.experiment import prepare_experiment
    from train.cli import parse
    from train.data import prepare
    from train.trainer import WEIGHTS_FILE, CapsatTrainer, make_accelerator

    model_config, config = parse(train_argv)
    if config.split != "query":
        raise ValueError(f"split {config.split!r}: this reads known models (a query split)")
    grid = sorted({float(b) for b in config.start_difficulty_grid}) or [0.0]
    data = prepare(config, encoder=model_config.capability_encoder, progress=False)
    trainer = CapsatTrainer(model_config, config, data, accelerator=make_accelerator(cpu=True))
    trainer.fit_task_head()
    trainer.start = trainer.choose_start()
    _, _, test = prepare_experiment(config.data, config.split, models=config.models or None,
                                    seed=config.seed).parts()
    queries = Queries.from_table(test, Embedder(model_config.capability_encoder).encode(
        test.texts))
    router, models = trainer.router, list(data.validation.models)
    test_scores = test.scores[models].to_numpy(dtype=float)

    def logits(beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(validation, test) direct logits with difficulty weight ``beta``; validation's
        scores."""
        trainer._apply_difficulty_weight(beta)
        val_probs, val_scores = trainer.validation_probabilities("encoder")
        router.network = trainer.accelerator.unwrap_model(trainer.network)
        router._evidence, router.read_through_llm, router.progress = None, False, False
        test_probs = router.predict_proba(queries, models)
        clipped = lambda p: logit(np.clip(p, 1e-7, 1 - 1e-7))  # float32 sigmoids reach 1
        return clipped(val_probs), clipped(test_probs), val_scores

    read = {}
    for name in ("step 0", "trained"):
        if name == "trained":
            trainer.accelerator.unwrap_model(trainer.network).load_trainable_state(
                load_file(f"{args.checkpoint}/{WEIGHTS_FILE}"))
        val0, test0, val_scores = logits(0.0)
        val1, test1, _ = logits(1.0)  # the logit is linear in the difficulty weight
        read[name] = {"val": val0, "test": test0, "val_d": val1 - val0, "test_d": test1 - test0}

    def figures(logit: np.ndarray, scores: np.ndarray) -> dict:
        p = 1 / (1 + np.exp(-logit))
        return {"auc": M.auc(p, scores), "query_auc": M.query_auc(p, scores),
                "log_loss": M.log_loss(p, scores), "routed_accuracy": M.routed_accuracy(p, scores)}

    rows = []
    zero, trained = read["step 0"], read["trained"]
    for label, query_share, candidate_share in VARIANTS:
        def mix(part: str) -> np.ndarray:
            change = trained[part] - zero[part]
            level = change.mean(axis=1, keepdims=True)
            return zero[part] + query_share * level + candidate_share * (change - level)
        val, tst = mix("val"), mix("test")
        beta = min(grid, key=lambda b: M.log_loss(1 / (1 + np.exp(-(val + b * zero["val_d"]))),
                                                  val_scores))
        rows.append({"variant": label, "difficulty_weight": beta,
                     "validation": figures(val + beta * zero["val_d"], val_scores),
                     "test": figures(tst + beta * zero["test_d"], test_scores)})
        print(rows[-1], flush=True)
    write_json(args.out, {"checkpoint": args.checkpoint, "train_arguments": train_argv,
                          "start": {k: trainer.start[k] for k in (
                              "start_knn", "start_knn_weight", "start_prior_shrink")},
                          "validation_queries": len(val_scores), "test_queries": len(test),
                          "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
