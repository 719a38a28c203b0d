"""``accelerate launch train --config RECIPE.yaml [--field value ...]``.

Reads ``CapsatConfig`` (the model) and ``TrainConfig`` (the run) from the YAML recipe, with
command-line overrides, prepares the data with the data builders, trains, and leaves the best
router (by its validation selection score) in ``<output_dir>/best`` as a ``save_pretrained`` folder.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

from capsat.capsat_model.config import CapsatConfig
from data_builders.atomic import write_json

from .config import TrainConfig


def parse(argv: list[str] | None = None) -> tuple[CapsatConfig, TrainConfig]:
    from trl import TrlParser

    parser = TrlParser((CapsatConfig, TrainConfig))
    model_config, train_config = parser.parse_args_and_config(args=argv)
    return model_config, train_config


def has_accelerator_device() -> bool:
    """Whether a GPU-like device exists. Without one we ask accelerate for the CPU explicitly:
    then a multi-process launch runs data-parallel over gloo (MULTI_CPU) instead of as N
    independent single processes."""
    import torch
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return bool(torch.cuda.is_available() or is_xpu_available() or is_npu_available()
                or is_mps_available())


def main(argv: list[str] | None = None) -> int:
    from .data import prepare
    from .trainer import CapsatTrainer, make_accelerator

    model_config, config = parse(argv)
    accelerator = make_accelerator(cpu=not has_accelerator_device())
    started = time.perf_counter()
    data = prepare(config, encoder=model_config.capability_encoder, progress=config.progress)
    if accelerator.is_main_process:
        print(f"data: {json.dumps(data.summary())}", flush=True)
    trainer = CapsatTrainer(model_config, config, data, accelerator=accelerator)
    result = trainer.train()
    if accelerator.is_main_process:
        summary = {**result, "data": data.summary(), "wall_seconds": time.perf_counter() - started,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "num_processes": accelerator.num_processes,
                   "model_config": trainer.router.config.to_dict(),
                   "train_config": config.__dict__}
        path = os.path.join(config.output_dir, "train_summary.json")
        write_json(path, summary, indent=2)
        print(f"best validation {config.select_on} score {result['best']['score']:.4f} at step "
              f"{result['best']['step']}; router in {config.output_dir}/best"
              + (" (saved without the LLM: its gate was 0, so it added nothing)"
                 if result["best"].get("saved_without_llm") else ""), flush=True)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
