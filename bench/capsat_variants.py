"""Settings of CapSAT's encoder stage compared on the validation part only (no LLM, no test):
what the recipes' defaults were chosen on.

    python bench/capsat_variants.py small '{"A": {}, "B": {"weight_pointwise": 0.3}}'
    python bench/capsat_variants.py llmrouter '{"A": {}, "B": {"weight_pointwise": 0.3}}'

``small`` is MMLU-Pro's five small open models; any other name is a data set. Each variant
overrides the TrainConfig / CapsatConfig fields it names; it trains the encoder stage (1,500
steps, validation every 250 on the whole validation part) and prints, per validated step,
(step, routed accuracy, query AUC, AUC), and the best by the selection score.
"""
from __future__ import annotations

import json
import sys
import time

SMALL = ["Meta-Llama-3_1-8B-Instruct", "Phi-3-mini-4k-instruct", "mathstral-7B", "gemma-7b",
         "Qwen1.5-7B-Chat"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from capsat.capsat_model.config import CapsatConfig
    from train.config import TrainConfig
    from train.data import prepare
    from train.trainer import CapsatTrainer

    name, variants = argv[0], json.loads(argv[1])
    data_name, models = ("mmlu_pro", SMALL) if name == "small" else (name, [])
    base = dict(data=data_name, models=models, max_validation_queries=0, encoder_steps=1500,
                llm_steps=0, eval_every=250, checkpoint_every=100000, progress=False)
    data = None
    for label, overrides in variants.items():
        model_overrides = {k: overrides.pop(k) for k in list(overrides)
                           if k in CapsatConfig.__dataclass_fields__}
        config = TrainConfig(**{**base, **overrides,
                                "output_dir": f"runs/variants/{name}_{label}"})
        data = data or prepare(config, progress=False)
        started = time.time()
        trainer = CapsatTrainer(CapsatConfig(use_llm=False, **model_overrides), config, data)
        trainer.train()
        steps = [(h["step"], round(h["val_routed_accuracy"], 4), round(h["val_query_auc"], 4),
                  round(h["val_auc"], 4)) for h in trainer.history if "val_auc" in h]
        print(label, round(time.time() - started), "best", trainer.best, steps, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
