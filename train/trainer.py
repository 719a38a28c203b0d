"""CapsatTrainer: trains a CapSAT router with accelerate, from one CPU process to many GPUs.

Each step takes ``groups_per_step`` Model-SAT listwise groups per process (k queries: one the
group's model got right, k-1 it got wrong), scores *every* training candidate on those queries
in one packed forward pass, and combines

- pointwise: Yes/No cross-entropy on every (query, candidate) pair (scores as soft targets);
- listwise: softmax over the group's queries of its model's logit, target the right one;
- across models: per query, softmax over the candidates toward the ones that got it right
  (the comparison routing makes; the Model-SAT listwise loss compares queries, not models);
- IRT: cross-entropy of sigmoid(a_q . theta_m - b_q) on the same pairs.

Stage 1 trains the connector and IRT heads only (the LoRA learning rate is held at 0); stage
2 trains LoRA too. The group order is a seeded permutation fixed up front, so step s always
sees the same groups: a run resumed from a checkpoint equals an uninterrupted one. Checkpoints
(trainable weights, optimiser state, trainer state) are safetensors + JSON written to a
temporary folder and renamed into place. The router kept at the end is the one with the best
validation AUC.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from capsat.capsat_model.config import CapsatConfig
from capsat.capsat_model.router import CapsatRouter
from capsat.evaluation import metrics as M
from capsat.routers.provenance import Provenance
from data_builders.atomic import atomic_folder

from .config import TrainConfig
from .data import TrainingData

CHECKPOINTS = "checkpoints"
BEST = "best"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
KEEP_CHECKPOINTS = 2


def validation_card(record: dict) -> str:
    """The model card's evaluation table: the validation figures of the kept step."""
    rows = [(key[len("val_"):], value) for key, value in record.items()
            if key.startswith("val_")]
    lines = [f"Validation part of the training run (step {record['step']}; chosen there):", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows]
    return "\n".join(lines)


class CapsatTrainer:
    def __init__(self, model_config: CapsatConfig, config: TrainConfig, data: TrainingData, *,
                 llm=None, tokenizer=None, accelerator: Accelerator | None = None):
        self.config = config
        self.data = data
        self.accelerator = accelerator or Accelerator()
        set_seed(config.seed)
        train_models = list(data.split.train_models)
        candidates = [c for c in data.candidates if c.name in train_models]
        self.router = CapsatRouter.create(model_config, candidates, data.aptitude.tasks,
                                          data.keywords, llm=llm, tokenizer=tokenizer)
        core_items = data.table.subset(sorted(data.aptitude.item_ids), train_models)
        self.router.fitted_on = Provenance.from_tables(
            data.train, data.validation, core_items, split=config.split, seed=config.seed,
            parts=["train", "validation", "aptitude items"])
        # The reference accuracies are the whole train part's, not the sample's.
        self.router.fitted_on.model_accuracy = {
            m: float(v) for m, v in data.table.subset(list(data.split.train), train_models)
            .scores.mean().items()}
        self.output_dir = Path(config.output_dir)
        network = self.router.network
        groups = network.trainable_groups()
        self.optimizer = torch.optim.AdamW(
            [{"params": groups["heads"], "lr": config.lr_heads},
             {"params": groups["lora"], "lr": 0.0}], weight_decay=config.weight_decay)
        self.network, self.optimizer = self.accelerator.prepare(network, self.optimizer)
        self.features = self.router.features.to(self.accelerator.device)
        self.labels = data.train.scores[self.router.models]
        self.texts = data.train.queries["query"]
        self.column = {m: i for i, m in enumerate(self.router.models)}
        self.order = self._group_order()
        self.step = 0
        self.best = {"auc": -math.inf, "step": None}
        self.history: list[dict] = []
        #: Seconds of the slowest step and of the last validation / checkpoint / save, for
        #: stopping within ``max_minutes`` (kept in checkpoints, so a resumed run knows them).
        self.timing: dict[str, float] = {}

    # ------------------------------------------------------------------ data
    def _group_order(self) -> np.ndarray:
        """Group indices for every step of every process, fixed by the seed."""
        n = len(self.data.groups)
        if n == 0:
            raise ValueError("no listwise groups: every model needs right and wrong answers "
                             "among the training queries")
        need = self.config.total_steps * self.config.groups_per_step * self.accelerator.num_processes
        rng = np.random.default_rng(self.config.seed)
        reps = -(-need // n)
        return np.concatenate([rng.permutation(n) for _ in range(max(reps, 1))])[:need]

    def groups_for(self, step: int) -> list[int]:
        per_step = self.config.groups_per_step * self.accelerator.num_processes
        chunk = self.order[step * per_step:(step + 1) * per_step]
        mine = chunk[self.accelerator.process_index::self.accelerator.num_processes]
        return [int(g) for g in mine]

    # ------------------------------------------------------------------ loss
    def losses(self, group_rows: list[int]) -> dict[str, torch.Tensor]:
        groups = self.data.groups.iloc[group_rows]
        query_ids = [q for ids in groups["query_ids"] for q in ids]
        unwrapped = self.accelerator.unwrap_model(self.network)
        batch = unwrapped.pack_queries(self.texts.loc[query_ids].tolist(),
                                       len(self.router.models)).to(self.accelerator.device)
        out = self.network(batch, self.features)
        targets = torch.tensor(self.labels.loc[query_ids].to_numpy(dtype=np.float32),
                               device=out.logits.device)
        pointwise = nn.functional.binary_cross_entropy_with_logits(out.logits, targets)
        irt = nn.functional.binary_cross_entropy_with_logits(out.irt_logits, targets)
        k = self.config.kshot
        listwise = []
        for g, (_, row) in enumerate(groups.iterrows()):
            logits = out.logits[g * k:(g + 1) * k, self.column[row["model"]]]
            target = torch.tensor(int(row["positive_index"]), device=logits.device)
            listwise.append(nn.functional.cross_entropy(logits[None], target[None]))
        listwise = torch.stack(listwise).mean()
        # Across candidates, per query: the right ones should out-score the wrong ones.
        solved = targets.sum(dim=1) > 0
        across = out.logits.sum() * 0.0
        if solved.any():
            share = targets[solved] / targets[solved].sum(dim=1, keepdim=True)
            log_p = nn.functional.log_softmax(out.logits[solved], dim=1)
            across = -(share * log_p).sum(dim=1).mean()
        c = self.config
        total = (c.weight_pointwise * pointwise + c.weight_listwise * listwise
                 + c.weight_across_models * across + c.weight_irt * irt)
        return {"loss": total, "pointwise": pointwise, "listwise": listwise,
                "across_models": across, "irt": irt}

    # ------------------------------------------------------------ validation
    def validate(self) -> dict:
        validation = self.data.validation
        probs = self.router.predict_proba(validation.texts)
        scores = validation.scores[self.router.models].to_numpy(dtype=float)
        return {"val_auc": M.auc(probs, scores), "val_query_auc": M.query_auc(probs, scores),
                "val_log_loss": M.log_loss(probs, scores),
                "val_routed_accuracy": M.routed_accuracy(probs, scores)}

    # ---------------------------------------------------------- checkpoints
    def _optimizer_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        state = self.optimizer.state_dict()
        tensors = {f"{i}.{k}": torch.as_tensor(v).contiguous().cpu()
                   for i, st in state["state"].items() for k, v in st.items()}
        return tensors, {"param_groups": state["param_groups"]}

    def save_checkpoint(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        target = self.output_dir / CHECKPOINTS / f"step-{self.step:07d}"
        if self.accelerator.is_main_process:
            with atomic_folder(target) as tmp:
                save_file(self.accelerator.unwrap_model(self.network).trainable_state(),
                          str(tmp / WEIGHTS_FILE))
                tensors, groups = self._optimizer_tensors()
                save_file(tensors, str(tmp / OPTIMIZER_FILE))
                state = {"step": self.step, "best": self.best, "history": self.history,
                         "timing": self.timing,
                         "optimizer": groups, "num_processes": self.accelerator.num_processes,
                         "train_config": self.config.__dict__}
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            done = sorted(target.parent.glob("step-*"))
            for old in done[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return target

    def latest_checkpoint(self) -> Path | None:
        folder = self.output_dir / CHECKPOINTS
        done = sorted(p for p in folder.glob("step-*")
                      if p.is_dir() and (p / STATE_FILE).exists())
        return done[-1] if done else None

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / STATE_FILE).read_text())
        if state["num_processes"] != self.accelerator.num_processes:
            raise ValueError(f"{path} was written by {state['num_processes']} processes; resume "
                             f"with the same number (now {self.accelerator.num_processes})")
        self.accelerator.unwrap_model(self.network).load_trainable_state(
            load_file(str(path / WEIGHTS_FILE)))
        tensors = load_file(str(path / OPTIMIZER_FILE))
        per_param: dict[int, dict] = {}
        for key, value in tensors.items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": per_param,
                                        "param_groups": state["optimizer"]["param_groups"]})
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.timing = dict(state["timing"])

    def save_best(self) -> None:
        if self.accelerator.is_main_process:
            self.router.save_pretrained(self.output_dir / BEST)  # atomic: a folder swap

    # -------------------------------------------------------------- training
    def _set_stage(self, step: int) -> str:
        stage2 = step >= self.config.stage1_steps
        self.optimizer.param_groups[1]["lr"] = self.config.lr_lora if stage2 else 0.0
        return "lora" if stage2 else "heads"

    def _out_of_time(self, started: float) -> bool:
        """Whether one more step would leave too little of ``max_minutes`` to finish: the
        slowest step so far plus the last validation, checkpoint and save. Every process gets
        the same answer."""
        if not self.config.max_minutes:
            return False
        t = self.timing
        finish = t.get("validation", 0.0) + t.get("checkpoint", 0.0) + t.get("save_best", 0.0)
        projected = time.perf_counter() - started + t.get("step_max", 0.0) + finish
        if projected > self.config.max_minutes * 60:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def _timed(self, key: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.timing[key] = time.perf_counter() - t0
        return out

    def _validate_and_keep_best(self, record: dict) -> None:
        """Validate (main process) and save the router if it is the best so far."""
        self.network.eval()
        if self.accelerator.is_main_process:
            record.update(self._timed("validation", self.validate))
            if record["val_auc"] > self.best["auc"]:
                self.best = {"auc": record["val_auc"], "step": self.step}
                self.router.model_card_table = validation_card(record)
                self._timed("save_best", self.save_best)
        self.accelerator.wait_for_everyone()

    def _log(self, record: dict, log_path: Path) -> None:
        self.history.append(record)
        if self.accelerator.is_main_process:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def train(self, stop_after: int | None = None) -> dict:
        """Run to the end (or ``stop_after`` steps, for tests that simulate a kill)."""
        if self.config.resume:
            latest = self.latest_checkpoint()
            if latest is not None:
                self.load_checkpoint(latest)
        total = self.config.total_steps
        main = self.accelerator.is_main_process
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.output_dir / "log.jsonl"
        self.router.progress = self.config.progress
        started = time.perf_counter()
        if self.step == 0 and not self.history:
            # Step 0: the untrained router's validation figures, the baseline training must
            # move (and the first estimate of what a validation costs).
            record = {"step": 0, "stage": "initial", "seconds": 0.0}
            self._validate_and_keep_best(record)
            self._log(record, log_path)
        bar = tqdm(total=total, initial=self.step, desc="training CapSAT", unit="step",
                   disable=not main or not self.config.progress)
        while self.step < total:
            if stop_after is not None and self.step >= stop_after:
                break
            stage = self._set_stage(self.step)
            self.network.train()
            step_started = time.perf_counter()
            losses = self.losses(self.groups_for(self.step))
            self.accelerator.backward(losses["loss"])
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.step += 1
            self.timing["step_max"] = max(self.timing.get("step_max", 0.0),
                                          time.perf_counter() - step_started)
            record = {"step": self.step, "stage": stage,
                      **{k: float(v.detach()) for k, v in losses.items()},
                      "seconds": round(time.perf_counter() - started, 2)}
            last = self.step == total or self._out_of_time(started)
            if self.step % self.config.eval_every == 0 or last:
                self._validate_and_keep_best(record)
            self._log(record, log_path)
            if main:
                bar.set_postfix(loss=f"{record['loss']:.3f}",
                                **({"val_auc": f"{record['val_auc']:.3f}"}
                                   if "val_auc" in record else {}))
                bar.update(1)
            if self.step % self.config.checkpoint_every == 0 or last:
                self._timed("checkpoint", self.save_checkpoint)
            if last:
                break
        bar.close()
        return {"step": self.step, "best": self.best, "completed": self.step == total}
