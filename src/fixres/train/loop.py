"""``fit``: train a classifier at a chosen resolution, evaluate it, checkpoint it, resume it.

Exactness of ``--resume``: the data order and every augmentation are functions of
``(seed, epoch, index)`` (see :mod:`fixres.data.loader`), the learning rate is a function
of the step, and a checkpoint stores the model, optimiser, gradient scaler and random
states together with the position (epoch, step in epoch). Resuming from any checkpoint
therefore replays exactly the steps an uninterrupted run would have taken; on the CPU
with a fixed seed, final weights are bit-identical (tests/test_faults.py kills a real
process to check it).

The recipe parts of :mod:`fixres.train.recipes` keep that: per-image policies draw from the
image's seed, random erasing and mixup from ``(seed, step, share of the global batch)``, the
repeated-augmentation order is a function of ``(seed, epoch)``, the training resolution
of ``epoch``, and the EMA weights are saved with the model (tests/test_recipes.py).

The run directory and the position are :mod:`fixres.train.run`'s; which epoch is ``best`` is
:mod:`fixres.train.select`'s. This module holds the set-up and the loop.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core.errors import FixresError
from ..core.options import to_dict
from ..core.progress import Progress, peak_memory_mb
from ..core.tables import pct
from ..core.runtime import (Runtime, average_batchnorm_buffers, init_distributed, rng_state,
                            seed_everything, set_rng_state)
from ..data.folder import scan_dataset
from ..data.index import split_holdout
from ..data.loader import TrainBatches, mix_seed, stop_workers
from ..data.pipeline import resolve_pipeline, train_batches
from ..data.preprocessing import Preprocessing
from ..data.repeat_aug import RepeatedBatches
from ..data.transforms import DEFAULT_CROP_PCT
from ..models import checkpoint as ckpt
from ..models import create_model
from ..models.sizes import check_input_size
from .config import TrainConfig, check_batch, create_kwargs
from .metrics_log import MetricSinks, check_sinks
from .optim import make_optimizer, optimizer_kwargs, schedule_for
from .recipes import BatchRecipe, train_transform
from .run import Position, RunFolder
from .select import better_links, evaluate_epoch, selection_for
from .step import TrainStep, check_finite
from .switchable import make_switchable, write_switchable_ladder




@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    summary: dict
    is_main: bool = True     # False on the other ranks of a distributed run


class Trainer:
    """The state of one training run; ``run()`` is the loop."""

    def __init__(self, cfg: TrainConfig, *, resume: bool, overwrite: bool, quiet: bool):
        self.cfg, self.quiet = cfg, quiet
        self.rt = Runtime.resolve(cfg.device, cfg.amp, dist_env=init_distributed(cfg.device), workers=cfg.workers,
                                  pipeline=cfg.pipeline, channels_last=cfg.channels_last, quiet=quiet)
        self.dist, self.device = self.rt.dist, self.rt.device
        if cfg.sync_bn and self.dist.enabled and self.device.type != "cuda":
            raise FixresError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm has no CPU kernel); without it the "
                              "batch-norm statistics are still averaged across processes before each evaluation "
                              "and checkpoint")
        cfg.check_pipeline(resolve_pipeline(cfg.pipeline, self.device, cfg.interpolation or "bilinear"))
        check_sinks(cfg.log_tensorboard, cfg.log_wandb)
        self.folder = RunFolder.prepare(cfg, self.dist, resume=resume, overwrite=overwrite)
        self._read_data()
        self._build_model()
        check_batch(cfg, self.dist.world, len(self.train_split))
        # after the data and the model are known good: a run that cannot start leaves no file
        self.folder.write_config(dataclasses.replace(cfg, crop_pct=self.prep.crop_pct,
                                                     interpolation=self.prep.interpolation))
        self._build_optimisation()
        self.position, self._epoch_loss, self._epoch_images = Position(), 0.0, 0   # this rank's sums of the epoch
        resumed_rng = self._restore() if resume else None
        torch.manual_seed(mix_seed(cfg.seed, self.dist.rank, self.position.step))  # per-rank dropout / drop-path
        if resumed_rng is not None:
            set_rng_state(resumed_rng)

    # ----------------------------------------------------------------- set-up
    def _read_data(self) -> None:
        cfg = self.cfg
        self.data = scan_dataset(cfg.data)
        self.classes = self.data.classes
        self.train_split, self.holdout_split = split_holdout(self.data.train, cfg.holdout, cfg.seed)
        self.skipped = ({("train", p): r for p, r in self.data.train.skipped}
                        | {("val", p): r for p, r in self.data.val.skipped})

    def _build_model(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.create_kwargs = create_kwargs(cfg)
        self.model = create_model(cfg.model, len(self.classes), pretrained=cfg.pretrained, weights=cfg.weights,
                                  new_classifier=cfg.new_classifier, **self.create_kwargs)
        declared = Preprocessing.from_pretrained_cfg(self.model.pretrained_cfg, cfg.model, sizes=False)
        self.prep = train_preprocessing(cfg, declared)
        check_input_size(self.model, [cfg.train_res, cfg.eval_res, *(cfg.switchable_res or ())], "training resolution")
        if cfg.switchable_res:      # RS-Nets: a private batch-norm per resolution (train.switchable)
            make_switchable(self.model, len(cfg.switchable_res))
        self.selection = selection_for(self.holdout_split, self.data.val, self.prep)
        self.normalizer = self.prep.normalizer(cfg.channels_last)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.dist.enabled:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def _build_optimisation(self) -> None:
        cfg, device = self.cfg, self.device
        self.optimizer = make_optimizer(self.model, **optimizer_kwargs(cfg, device))
        self.ema = cfg.ema.make(self.model)
        self.schedule = cfg.resolution_schedule
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.rt.amp_dtype == torch.float16)
        self.net = (DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
                    if self.dist.enabled else self.model)
        if cfg.compile:
            self.net = torch.compile(self.net)
        recipe = BatchRecipe(cfg.erasing, cfg.mixing, cfg.loss_settings, len(self.classes), device)
        self.step = TrainStep(self.model, self.net, self.optimizer, self.scaler, recipe, self.normalizer, self.rt,
                              cfg.seed, cfg.batch_size, cfg.accum_steps, cfg.clip_grad, self._note_skipped,
                              tuple(sorted(cfg.switchable_res or ())))
        batches = dict(n=len(self.train_split), global_batch=cfg.batch_size, seed=cfg.seed, rank=self.dist.rank,
                       world=self.dist.world, accum=cfg.accum_steps)
        self.sampler = (RepeatedBatches(**batches, repeats=cfg.aug_repeats) if cfg.aug_repeats > 1
                        else TrainBatches(**batches))
        self.loader, self.loader_res = None, None     # made per training resolution (progressive resizing)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.lr_at = schedule_for(cfg, self.steps_per_epoch)

    # ----------------------------------------------------------------- checkpoints
    def _meta(self, metrics: dict) -> ckpt.CheckpointMeta:
        p = self.position
        trained_at = self.schedule.res_at(p.epoch - 1 if p.step_in_epoch == 0 else p.epoch)   # its last epoch's
        ema = None
        if self.ema is not None:
            ema = {"decay": self.cfg.ema_decay, "metrics": {k[4:]: v for k, v in metrics.items() if k.startswith("ema_")},
                   "selection": self.selection.record("ema")}
        return ckpt.CheckpointMeta(
            model=self.cfg.model, class_names=self.classes,
            preprocessing=self.prep.override("fixres train: the resolution its last epoch trained at",
                                             train_res=trained_at),
            epoch=p.epoch, step=p.step, metrics={k: v for k, v in metrics.items() if not k.startswith("ema_")},
            recipe=self.cfg.recipe_record(), ema=ema, selection=self.selection.record("model"),
            data_digest=f"{self.data.train.digest()}-{self.data.val.digest()}", model_kwargs=self.create_kwargs,
            holdout={"fraction": self.cfg.holdout, "seed": self.cfg.seed, "images": len(self.holdout_split)}
            if self.cfg.holdout else None)

    def save(self, metrics: dict, best: tuple[str, ...] = ()) -> None:
        average_batchnorm_buffers(self.model, self.dist)
        if self.ema is not None:
            average_batchnorm_buffers(self.ema.module, self.dist)
        state = self._train_state()  # collective: every rank takes part
        self.folder.save(self.position, self.model, self._meta(metrics), state,
                         ema_model=self.ema.module if self.ema is not None else None, best=best)

    def _train_state(self) -> dict:
        # Per rank: random state, and the running loss sum of a checkpoint taken mid-epoch.
        mine = {"rng": rng_state(), "epoch_loss_sum": self._epoch_loss, "epoch_images": self._epoch_images}
        ranks = [mine]
        if self.dist.enabled:
            ranks = [None] * self.dist.world
            torch.distributed.all_gather_object(ranks, mine)
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "ranks": ranks,
                **self.position.state()}

    def _restore(self) -> dict | None:
        """Continue from the run's last checkpoint; returns this rank's random state to set last."""
        restored = self.folder.restore(self.classes, ema=self.ema is not None)
        if restored is None:
            return None
        weights, ema_weights, state, directory = restored
        self.model.load_state_dict(weights)
        if self.ema is not None:
            self.ema.module.load_state_dict(ema_weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.position = Position.from_state(state)
        self.folder.forget_rows_after(self.position.step)
        self.folder.log(f"resumed {self.folder.root} at epoch {self.position.epoch}, step {self.position.step}")
        ranks = state["ranks"]
        if len(ranks) != self.dist.world:   # another world size: each rank starts its streams afresh
            return None
        mine = ranks[self.dist.rank]
        self._epoch_loss, self._epoch_images = mine["epoch_loss_sum"], mine["epoch_images"]
        return mine["rng"]

    # ----------------------------------------------------------------- loop
    def train_epoch(self, bar: Progress) -> dict:
        """One epoch from the current position. Returns its training statistics."""
        cfg, p = self.cfg, self.position
        self.net.train()
        self.sampler.set_epoch(p.epoch, p.step_in_epoch)
        batches = iter(self._loader())
        # Sums stay on the device (no per-step sync); a resumed epoch starts from the saved ones.
        loss_sum = torch.tensor(float(self._epoch_loss), device=self.device)
        images, t0 = self._epoch_images, time.perf_counter()
        images_before, lr = images, self.lr_at(p.step)
        while p.step_in_epoch < self.steps_per_epoch:
            lr = self.lr_at(p.step)
            self.step.set_lr(lr)
            images += self.step(batches, p.step, loss_sum)
            p.step, p.step_in_epoch = p.step + 1, p.step_in_epoch + 1
            if self.ema is not None:
                self.ema.update(self.model, step=p.step)   # the decay warm-up is a function of the step
            if bar.due(p.step_in_epoch):  # a host sync, only every few steps
                self._check_finite(loss_sum)
                bar.update(p.step_in_epoch, loss=loss_sum.item() / max(images, 1),
                           images_per_s=images * self.dist.world / (time.perf_counter() - t0), lr=lr)
            if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0 and p.step_in_epoch < self.steps_per_epoch:
                self._check_finite(loss_sum)  # never checkpoint a diverged model
                self._epoch_loss, self._epoch_images = loss_sum.item(), images
                self.save({"train_loss": loss_sum.item() / max(images, 1)})
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self._check_finite(loss_sum)
        return self._epoch_totals(loss_sum, images, images - images_before, time.perf_counter() - t0, lr)

    def _epoch_totals(self, loss_sum: torch.Tensor, images: int, ran: int, seconds: float, lr: float) -> dict:
        """The epoch's row (summed over ranks); the epoch's running sums are reset."""
        total = torch.tensor([loss_sum.item(), images, ran], dtype=torch.float64, device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(total)
        self.position.train_seconds += seconds
        self.position.train_images += int(total[2].item())
        self._epoch_loss, self._epoch_images = 0.0, 0
        return {"train_res": self.loader_res, "train_loss": total[0].item() / max(total[1].item(), 1),
                "train_images": int(total[1]), "train_seconds": round(seconds, 3),
                "train_images_per_s": round(total[2].item() / max(seconds, 1e-9), 1), "lr": lr}

    def _loader(self):
        """The training batches at this epoch's resolution (a new loader when it changes)."""
        res = self.schedule.res_at(self.position.epoch)
        if res != self.loader_res:
            view = train_transform(self.prep.train_view(res), self.cfg.auto_augment, self.prep.mean)
            if self.loader is not None:
                stop_workers(self.loader)   # the previous resolution's workers
            self.loader, self.loader_res = train_batches(self.train_split, view, self.sampler, self.rt), res
        return self.loader

    def _evaluate(self, row: dict) -> tuple[str, ...]:
        """Evaluate the model (and its EMA) into ``row``; return the best links it now deserves."""
        models = {"model": self.model, **({"ema": self.ema.module} if self.ema is not None else {})}
        row.update(evaluate_epoch(models, self.data.val, self.selection, self.prep, self.rt, self._note_skipped))
        return better_links(self.position.best, row, self.selection, models, self.position.epoch)

    def _check_finite(self, loss_sum: torch.Tensor) -> None:
        check_finite(loss_sum, self.rt.dist, self.position, self.folder.last)

    def _note_skipped(self, split: str, items) -> None:
        for path, reason in items:
            self.skipped[(split, path)] = reason

    def run(self) -> TrainResult:
        sinks = None
        if self.dist.is_main:   # resume_step: keep the checkpoint's own row
            sinks = MetricSinks(self.folder.root, to_dict(self.cfg), tensorboard=self.cfg.log_tensorboard,
                                wandb=self.cfg.log_wandb, project=self.cfg.wandb_project,
                                resume_step=self.position.step + 1 if self.position.step else None)
        try:
            return self._run(sinks)
        finally:
            if self.loader is not None:
                stop_workers(self.loader)
            if sinks is not None:
                sinks.close()

    def _run(self, sinks: MetricSinks | None) -> TrainResult:
        cfg, p = self.cfg, self.position
        if p.epoch >= cfg.epochs:
            self.folder.log(f"{self.folder.root} already finished {p.epoch} epochs")
        while p.epoch < cfg.epochs:
            with Progress(self.steps_per_epoch, f"epoch {p.epoch + 1}/{cfg.epochs}", start=p.step_in_epoch,
                          enabled=self.dist.is_main and not self.quiet) as bar:
                row = self.train_epoch(bar)
            p.epoch, p.step_in_epoch = p.epoch + 1, 0
            row = {"epoch": p.epoch, "step": p.step, **row}
            best = self._evaluate(row) if p.epoch % cfg.eval_every == 0 or p.epoch == cfg.epochs else ()
            self.folder.append_row(row, self.skipped)
            if sinks is not None:
                sinks.log(row, p.step)
            self.save(row, best=best)
            self.folder.log(epoch_line(row, cfg.epochs))
        if cfg.switchable_res:   # RUN/ladder: a rung per resolution (train.switchable)
            write_switchable_ladder(self.folder.root / "ladder", self.model, self._meta({}), self.step.paths,
                                    self.data.val, self.holdout_split, self.prep, self.rt)
        summary = self._summary()
        self.folder.write_summary(summary)
        return TrainResult(self.folder.root, summary, self.dist.is_main)

    def _summary(self) -> dict:
        cfg = self.cfg
        return self.folder.summary(self.position, {
            "model": cfg.model, "classes": len(self.classes), "train_res": cfg.train_res, "test_res": cfg.eval_res,
            "best_chosen_on": self.selection.split, "recipe": cfg.recipe_record(),
            "peak_memory_mb": peak_memory_mb(self.device), "device": str(self.device), "world_size": self.dist.world,
            "skipped_files": len(self.skipped)}, ema=self.ema is not None)


def epoch_line(row: dict, epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  @{row['train_res']}px  loss {row['train_loss']:.4f}  "
            f"{row['train_images_per_s']:.0f} img/s  {row['train_seconds']:.1f}s")
    if "holdout_top1" in row:
        text += f"  holdout top1 {row['holdout_top1']:.2f}"
    if "val_top1" in row:
        text += f"  val@{row['val_test_res']} top1 {row['val_top1']:.2f} top5 {pct(row['val_top5'])}"
    if "ema_val_top1" in row:
        text += f"  ema top1 {row['ema_val_top1']:.2f}"
    return text


def train_preprocessing(cfg: TrainConfig, declared: Preprocessing) -> Preprocessing:
    """The run's preprocessing record: the normalisation the model declares (its timm pretrained
    config, :meth:`Preprocessing.from_pretrained_cfg`); the test crop fraction and interpolation of
    the weights it starts from (``--pretrained`` / ``--weights``: the preprocessing they were trained
    with) unless given, else fixres's defaults (a new model has none of its own: 0.875, bilinear);
    the run's geometry and training crop settings."""
    base = declared if cfg.starts_from_weights else declared.override(
        "fixres train defaults", crop_pct=DEFAULT_CROP_PCT, interpolation="bilinear")
    return base.override("fixres train", interpolation=cfg.interpolation, crop_pct=cfg.crop_pct,
                         train_res=cfg.train_res, test_res=cfg.eval_res, scale=cfg.scale, ratio=cfg.ratio,
                         hflip=cfg.hflip, color_jitter=cfg.color_jitter)


def fit(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` into the run directory ``cfg.out``."""
    return Trainer(cfg, resume=resume, overwrite=overwrite, quiet=quiet).run()
