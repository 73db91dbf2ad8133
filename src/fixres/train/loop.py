"""``fit``: train a classifier at a chosen resolution, evaluate it, checkpoint it, resume it.

Exactness of ``--resume``: the data order and every augmentation are functions of
``(seed, epoch, index)`` (see :mod:`fixres.data.loader`), the learning rate is a function
of the step, and a checkpoint stores the model, optimiser, gradient scaler and random
states together with the position (epoch, step in epoch). Resuming from any checkpoint
therefore replays exactly the steps an uninterrupted run would have taken; on the CPU
with a fixed seed, final weights are bit-identical (tests/test_resume.py kills a real
process to check it).

The recipe parts of :mod:`fixres.train.recipes` keep that: per-image policies draw from the
image's seed, random erasing and mixup from ``(seed, step, share of the global batch)``, the
repeated-augmentation order is a function of ``(seed, epoch)``, the training resolution
of ``epoch``, and the EMA weights are saved with the model (tests/test_recipes.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core.errors import FixresError
from ..core.options import dump_yaml, read_yaml, to_dict
from ..core.progress import Progress, peak_memory_mb
from ..core.rundir import append_jsonl, prepare_run_dir, read_jsonl, write_json, write_text
from ..core.runtime import (
    Runtime,
    autocast,
    average_batchnorm_buffers,
    barrier,
    init_distributed,
    rng_state,
    seed_everything,
    set_rng_state,
)
from ..data.folder import scan_dataset
from ..data.index import split_holdout
from ..data.loader import TrainBatches, mix_seed, stop_workers
from ..data.pipeline import resolve_pipeline, train_batches
from ..data.preprocessing import Preprocessing
from ..data.repeat_aug import RepeatedBatches
from ..data.transforms import DEFAULT_CROP_PCT
from ..measure.infer import evaluate
from ..models import checkpoint as ckpt
from ..models import create_model
from ..models.sizes import check_input_size
from .config import RESUMABLE_CHANGES, TrainConfig, parse_model_kwargs
from .metrics_log import MetricSinks, check_sinks
from .optim import make_optimizer, schedule_for
from .recipes import BatchRecipe, ResolutionSchedule, check_pipeline, make_ema, recipe_record, train_transform


class NonFiniteLoss(FixresError):
    pass


BATCH_RECIPE_STREAM = 0xBA7C4   # tags the seeds of random erasing and mixup (see BatchRecipe)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    summary: dict
    is_main: bool = True     # False on the other ranks of a distributed run


def stored_config(values: dict, run_dir: Path) -> dict:
    """The settings stored in a run being resumed, after checking ``values`` against them.

    Only settings in ``RESUMABLE_CHANGES`` may differ; any other difference is refused."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FixresError(f"cannot resume: {run_dir} is not a fixres run directory (no config.yaml)")
    stored = read_yaml(path)
    changed = sorted(k for k, v in values.items()
                     if k in stored and k not in RESUMABLE_CHANGES and _norm(stored[k]) != _norm(v))
    if changed:
        raise FixresError(f"cannot resume {run_dir} with different settings: "
                          + ", ".join(f"{k} ({stored[k]!r} -> {values[k]!r})" for k in changed))
    return stored


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


class Trainer:
    """The state of one training run; ``run()`` is the loop."""

    def __init__(self, cfg: TrainConfig, *, resume: bool, overwrite: bool, quiet: bool):
        self.cfg, self.quiet = cfg, quiet
        self.rt = Runtime.resolve(cfg.device, cfg.amp, dist_env=init_distributed(cfg.device), workers=cfg.workers,
                                  pipeline=cfg.pipeline, channels_last=cfg.channels_last, quiet=quiet)
        self.dist, self.device, self.amp_dtype = self.rt.dist, self.rt.device, self.rt.amp_dtype
        self.run_dir = Path(cfg.out)
        if cfg.sync_bn and self.dist.enabled and self.device.type != "cuda":
            raise FixresError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm has no CPU kernel); without it the "
                              "batch-norm statistics are still averaged across processes before each evaluation "
                              "and checkpoint")
        check_pipeline(cfg, resolve_pipeline(cfg.pipeline, self.device, cfg.interpolation or "bilinear"))
        check_sinks(cfg.log_tensorboard, cfg.log_wandb)
        if self.dist.is_main:
            prepare_run_dir(self.run_dir, resume=resume, overwrite=overwrite)
            if resume:  # what a crash in the middle of a checkpoint write left behind
                for where in (self.run_dir, self.run_dir / "checkpoints"):
                    ckpt.remove_stale_temporaries(where)
        barrier(self.dist)

        self.data = scan_dataset(cfg.data)
        self.classes = self.data.classes
        self.train_split, self.holdout_split = split_holdout(self.data.train, cfg.holdout, cfg.seed)
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = create_model(cfg.model, len(self.classes), pretrained=cfg.pretrained, weights=cfg.weights,
                                  new_classifier=cfg.new_classifier, **self.model_kwargs)
        self.prep = train_preprocessing(cfg, Preprocessing.from_pretrained_cfg(self.model.pretrained_cfg, cfg.model,
                                                                               sizes=False))
        check_input_size(self.model, [cfg.train_res, cfg.eval_res], "training or evaluation resolution")
        if self.dist.is_main:   # after the data and the model are known good: a run that cannot start leaves no file
            write_text(self.run_dir / "config.yaml", dump_yaml(resolved_config(cfg, self.prep)))
        self.normalizer = self.prep.normalizer(cfg.channels_last)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.dist.enabled:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.ema = make_ema(self.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay else None
        self.recipe = BatchRecipe(cfg, len(self.classes), self.device)
        self.schedule = ResolutionSchedule.of(cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.net = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if self.dist.enabled else self.model)
        if cfg.compile:
            self.net = torch.compile(self.net)

        if cfg.batch_size % (cfg.accum_steps * self.dist.world):
            raise FixresError(f"batch_size {cfg.batch_size} is not divisible by accum_steps {cfg.accum_steps} "
                              f"x {self.dist.world} processes")
        if len(self.train_split) < cfg.batch_size:
            raise FixresError(f"{len(self.train_split)} training images are fewer than one batch of {cfg.batch_size}")
        if cfg.mixes and (cfg.batch_size // (cfg.accum_steps * self.dist.world)) % 2:
            raise FixresError(f"mixup/CutMix needs an even batch per step and process: {cfg.batch_size} / "
                              f"({cfg.accum_steps} accumulation steps x {self.dist.world} processes) is odd")
        batches = dict(n=len(self.train_split), global_batch=cfg.batch_size, seed=cfg.seed, rank=self.dist.rank,
                       world=self.dist.world, accum=cfg.accum_steps)
        self.sampler = (RepeatedBatches(**batches, repeats=cfg.aug_repeats) if cfg.aug_repeats > 1
                        else TrainBatches(**batches))
        self.loader, self.loader_res = None, None     # made per training resolution (progressive resizing)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.lr_at = schedule_for(cfg, self.steps_per_epoch)
        self.epoch, self.step_in_epoch, self.step = 0, 0, 0
        self.best_top1, self.best_epoch = -1.0, None
        self.skipped = {("train", p): r for p, r in self.data.train.skipped} | {("val", p): r for p, r in self.data.val.skipped}
        self.train_seconds, self.train_images = 0.0, 0
        self._epoch_loss, self._epoch_images = 0.0, 0   # this rank's sums so far in the current epoch
        if resume:
            self._restore()
        torch.manual_seed(mix_seed(cfg.seed, self.dist.rank, self.step))  # per-rank dropout / drop-path draws
        if resume and self._resume_rng is not None:
            set_rng_state(self._resume_rng)

    @property
    def model_kwargs(self) -> dict:
        """The timm.create_model arguments besides the name and classes (recorded in the checkpoint)."""
        own = dict(drop_rate=self.cfg.drop_rate, drop_path_rate=self.cfg.drop_path_rate)
        return {**parse_model_kwargs(self.cfg.model_kwargs), **{k: v for k, v in own.items() if v is not None}}

    # ----------------------------------------------------------------- checkpoints
    def _meta(self, metrics: dict) -> ckpt.CheckpointMeta:
        ema = None
        if self.ema is not None:
            ema = {"decay": self.cfg.ema_decay, "metrics": {k[4:]: v for k, v in metrics.items() if k.startswith("ema_")}}
        return ckpt.CheckpointMeta(
            model=self.cfg.model, class_names=self.classes, preprocessing=self.prep,
            epoch=self.epoch, step=self.step, metrics={k: v for k, v in metrics.items() if not k.startswith("ema_")},
            recipe=recipe_record(self.cfg, self.schedule), ema=ema,
            data_digest=f"{self.data.train.digest()}-{self.data.val.digest()}", model_kwargs=self.model_kwargs,
            holdout={"fraction": self.cfg.holdout, "seed": self.cfg.seed, "images": len(self.holdout_split)}
            if self.cfg.holdout else None)

    def _train_state(self) -> dict:
        # Per rank: random state, and the running loss sum of a checkpoint taken mid-epoch.
        mine = {"rng": rng_state(), "epoch_loss_sum": self._epoch_loss, "epoch_images": self._epoch_images}
        ranks = [mine]
        if self.dist.enabled:
            ranks = [None] * self.dist.world
            torch.distributed.all_gather_object(ranks, mine)
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "ranks": ranks,
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
                "best_top1": self.best_top1, "best_epoch": self.best_epoch,
                "train_seconds": self.train_seconds, "train_images": self.train_images}

    def save(self, metrics: dict, is_best: bool = False) -> None:
        average_batchnorm_buffers(self.model, self.dist)
        if self.ema is not None:
            average_batchnorm_buffers(self.ema.module, self.dist)
        state = self._train_state()  # collective: every rank takes part
        if self.dist.is_main:
            name = f"epoch-{self.epoch:04d}" if self.step_in_epoch == 0 else f"step-{self.step:07d}"
            directory = self.run_dir / "checkpoints" / name
            ckpt.save_checkpoint(directory, self.model, self._meta(metrics), state,
                                 ema_model=self.ema.module if self.ema is not None else None)
            ckpt.point(self.run_dir / "last", directory)
            if is_best:
                ckpt.point(self.run_dir / "best", directory)
            self._prune()
        barrier(self.dist)

    def _prune(self) -> None:
        """Keep the ``keep_last`` most recent checkpoints (and best/last); a directory without
        metadata can only be what an interrupted deletion of an older fixres left: removed too."""
        keep = {(self.run_dir / n).resolve() for n in ("last", "best") if (self.run_dir / n).exists()}
        entries = [p for p in (self.run_dir / "checkpoints").iterdir() if not p.name.startswith(".")]
        broken = [p for p in entries if not (p / ckpt.META).is_file()]
        ordered = sorted((p for p in entries if p not in broken), key=lambda p: ckpt.read_meta(p).step)
        for old in broken + ordered[:-self.cfg.keep_last]:
            if old.resolve() not in keep:
                ckpt.delete_checkpoint(old)

    def _restore(self) -> None:
        self._resume_rng = None
        last = self.run_dir / "last"
        if not last.exists():
            self._log(f"no checkpoint in {self.run_dir} yet: starting from the beginning")
            self._forget_rows_after_checkpoint()   # a kill between a checkpoint's rename and `last` leaves rows
            return
        state_dict, meta, directory = ckpt.load_checkpoint(last)
        if tuple(meta.class_names) != self.classes:
            raise FixresError(f"{directory}: checkpoint classes differ from the data's")
        self.model.load_state_dict(state_dict)
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.load_checkpoint(directory, ema=True)[0])
        state = ckpt.load_train_state(directory)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "step_in_epoch", "step", "best_top1", "best_epoch", "train_seconds", "train_images"):
            setattr(self, key, state[key])
        ranks = state["ranks"]
        if len(ranks) == self.dist.world:  # same world size: each rank continues its own streams
            self._resume_rng = ranks[self.dist.rank]["rng"]
            self._epoch_loss = ranks[self.dist.rank]["epoch_loss_sum"]
            self._epoch_images = ranks[self.dist.rank]["epoch_images"]
        self._forget_rows_after_checkpoint()
        self._log(f"resumed {self.run_dir} at epoch {self.epoch}, step {self.step}")

    def _forget_rows_after_checkpoint(self) -> None:
        """Drop the log rows written after the checkpoint resumed from: they will be redone."""
        if self.dist.is_main:
            rows = [r for r in read_jsonl(self.run_dir / "metrics.jsonl") if r.get("step", 0) <= self.step]
            write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # ----------------------------------------------------------------- loop
    def train_epoch(self, bar: Progress) -> dict:
        """One epoch from the current position. Returns its training statistics."""
        cfg, accum = self.cfg, self.cfg.accum_steps
        self.net.train()
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        batches = iter(self._loader())
        # Sums stay on the device (no per-step sync); a resumed epoch starts from the saved ones.
        loss_sum = torch.tensor(float(self._epoch_loss), device=self.device)
        images, t0 = self._epoch_images, time.perf_counter()
        images_before = images
        while self.step_in_epoch < self.steps_per_epoch:
            lr = self.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            for micro in range(accum):
                batch = next(batches)
                self._note_skipped("train", batch.skipped)
                if batch.images is None:
                    continue
                x, y = self.normalizer(batch.images, self.device), batch.labels.to(self.device, non_blocking=True)
                # random erasing, mixup/CutMix (when on): draws seeded by the step and the share of the global
                # batch (micro * world + rank: the same images whatever the world size and accumulation)
                share = micro * self.dist.world + self.dist.rank
                x, target = self.recipe(x, y, mix_seed(cfg.seed, BATCH_RECIPE_STREAM, self.step, share))
                sync = micro == accum - 1 or not self.dist.enabled
                try:
                    with (contextlib.nullcontext() if sync else self.net.no_sync()), autocast(self.device, self.amp_dtype):
                        loss = self.recipe.criterion(self.net(x), target)
                    self.scaler.scale(loss / accum).backward()
                except torch.cuda.OutOfMemoryError:
                    raise self._out_of_memory(len(y)) from None
                loss_sum += loss.detach() * y.numel()
                images += y.numel()
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.step_in_epoch += 1
            if self.ema is not None:
                self.ema.update(self.model, step=self.step)   # the decay warm-up is a function of the step
            if bar.due(self.step_in_epoch):  # a host sync, only every few steps
                self._check_finite(loss_sum)
                bar.update(self.step_in_epoch, loss=loss_sum.item() / max(images, 1),
                           images_per_s=images * self.dist.world / (time.perf_counter() - t0), lr=lr)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._check_finite(loss_sum)  # never checkpoint a diverged model
                self._epoch_loss, self._epoch_images = loss_sum.item(), images
                self.save({"train_loss": loss_sum.item() / max(images, 1)})
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        self._check_finite(loss_sum)
        total = torch.tensor([loss_sum.item(), images], dtype=torch.float64, device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(total)
        ran = torch.tensor([images - images_before], dtype=torch.float64, device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(ran)
        self.train_seconds += seconds
        self.train_images += int(ran.item())
        self._epoch_loss, self._epoch_images = 0.0, 0
        return {"train_res": self.loader_res, "train_loss": total[0].item() / max(total[1].item(), 1),
                "train_images": int(total[1]),
                "train_seconds": round(seconds, 3), "train_images_per_s": round(ran.item() / max(seconds, 1e-9), 1),
                "lr": lr}

    def _loader(self):
        """The training batches at this epoch's resolution (a new loader when it changes)."""
        res = self.schedule.res_at(self.epoch)
        if res != self.loader_res:
            view = train_transform(self.prep.train_view(res), self.cfg.auto_augment, self.prep.mean)
            if self.loader is not None:
                stop_workers(self.loader)   # the previous resolution's workers
            self.loader, self.loader_res = train_batches(self.train_split, view, self.sampler, self.rt), res
        return self.loader

    def _evaluate(self, row: dict) -> bool:
        """Evaluate the model (and its EMA) into ``row`` at the test geometry of the epoch just
        trained; return whether the model is the best so far."""
        prep = self.prep
        if self.schedule.progressive:   # the run's train/test ratio at the epoch's training resolution
            prep = prep.override("progressive resizing",
                                 test_res=self.schedule.eval_res_at(self.epoch - 1, self.cfg.eval_res))
        result, skipped = evaluate(self.model, self.data.val, prep, self.rt)
        self._note_skipped("val", skipped)
        row.update({f"val_{k}": v for k, v in result.row().items()})
        if self.ema is not None:
            average_batchnorm_buffers(self.ema.module, self.dist)
            ema, _ = evaluate(self.ema.module, self.data.val, prep, self.rt, label=f"ema eval@{prep.test_res}")
            row.update({f"ema_val_{k}": v for k, v in ema.row().items()})
        if result.top1 > self.best_top1:
            self.best_top1, self.best_epoch = result.top1, self.epoch
            return True
        return False

    def _check_finite(self, loss_sum: torch.Tensor) -> None:
        """Stop if the loss is NaN or infinite on any rank (a collective: every rank calls it
        at the same steps)."""
        bad = (~torch.isfinite(loss_sum)).float().reshape(1)
        if self.dist.enabled:
            torch.distributed.all_reduce(bad)
        if bad.item():
            last = (self.run_dir / "last").resolve() if (self.run_dir / "last").exists() else None
            kept = f"; the last good checkpoint is kept at {last}" if last else "; no checkpoint was written yet"
            raise NonFiniteLoss(f"training loss became {loss_sum.item()} near step {self.step} (epoch {self.epoch + 1})"
                                f"{kept}. Lower --lr, add --clip-grad, or use --amp none")

    def _out_of_memory(self, images: int) -> FixresError:
        cfg = self.cfg
        torch.cuda.empty_cache()
        half = max(self.dist.world * cfg.accum_steps, cfg.batch_size // 2)
        return FixresError(
            f"GPU out of memory with {images} images per process per step at {self.loader_res or cfg.train_res}px "
            f"(--batch-size {cfg.batch_size} over {self.dist.world} process(es) x {cfg.accum_steps} accumulation "
            f"step(s)); try --accum-steps {cfg.accum_steps * 2} (same global batch) or --batch-size {half}")

    def _note_skipped(self, split: str, items) -> None:
        for path, reason in items:
            self.skipped[(split, path)] = reason

    def run(self) -> TrainResult:
        sinks = None
        if self.dist.is_main:
            sinks = MetricSinks(self.run_dir, to_dict(self.cfg), tensorboard=self.cfg.log_tensorboard,
                                wandb=self.cfg.log_wandb, project=self.cfg.wandb_project,
                                resume_step=self.step + 1 if self.step else None)   # keep the checkpoint's own row
        try:
            return self._run(sinks)
        finally:
            if self.loader is not None:
                stop_workers(self.loader)
            if sinks is not None:
                sinks.close()

    def _run(self, sinks: MetricSinks | None) -> TrainResult:
        cfg = self.cfg
        if self.epoch >= cfg.epochs:
            self._log(f"{self.run_dir} already finished {self.epoch} epochs")
        while self.epoch < cfg.epochs:
            with Progress(self.steps_per_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}", start=self.step_in_epoch,
                          enabled=self.dist.is_main and not self.quiet) as bar:
                row = self.train_epoch(bar)
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            row = {"epoch": self.epoch, "step": self.step, **row}
            is_best = False
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                average_batchnorm_buffers(self.model, self.dist)   # every rank evaluates the same model
                is_best = self._evaluate(row)
            if self.dist.is_main:   # the row first: a kill before the checkpoint lands drops it on resume
                append_jsonl(self.run_dir / "metrics.jsonl", row)   # (rows past the checkpoint are redone);
                self._write_skipped()                               # after it, it would be lost
                if sinks is not None:
                    sinks.log(row, self.step)
            self.save(row, is_best=is_best)
            self._log(_epoch_line(row, cfg.epochs))
        summary = self._summary()
        if self.dist.is_main:
            write_json(self.run_dir / "summary.json", summary)
        return TrainResult(self.run_dir, summary, self.dist.is_main)

    def _write_skipped(self) -> None:
        rows = [{"split": s, "path": p, "reason": r} for (s, p), r in sorted(self.skipped.items())]
        write_json(self.run_dir / "skipped.json", {"count": len(rows), "files": rows})

    def _summary(self) -> dict:
        rows = read_jsonl(self.run_dir / "metrics.jsonl") if self.dist.is_main else []
        last = rows[-1] if rows else {}
        best = next((r for r in rows if r.get("epoch") == self.best_epoch), {})
        return {"run_dir": str(self.run_dir), "model": self.cfg.model, "classes": len(self.classes),
                "train_res": self.cfg.train_res, "test_res": self.cfg.eval_res, "epochs": self.epoch, "steps": self.step,
                "best_epoch": self.best_epoch, "best_val_top1": best.get("val_top1"), "last_val_top1": last.get("val_top1"),
                "last_ema_val_top1": last.get("ema_val_top1"), "recipe": recipe_record(self.cfg, self.schedule),
                "train_seconds": round(self.train_seconds, 2),
                "train_images_per_s": round(self.train_images / max(self.train_seconds, 1e-9), 1),
                "peak_memory_mb": peak_memory_mb(self.device), "device": str(self.device), "world_size": self.dist.world,
                "skipped_files": len(self.skipped), "versions": ckpt.versions()}

    def _log(self, text: str) -> None:
        if self.dist.is_main:
            Progress.write(text)


def _epoch_line(row: dict, epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  @{row['train_res']}px  loss {row['train_loss']:.4f}  "
            f"{row['train_images_per_s']:.0f} img/s  {row['train_seconds']:.1f}s")
    if "val_top1" in row:
        text += f"  val@{row['val_test_res']} top1 {row['val_top1']:.2f} top5 {row['val_top5']:.2f}"
    if "ema_val_top1" in row:
        text += f"  ema top1 {row['ema_val_top1']:.2f}"
    return text


def resolved_config(cfg: TrainConfig, prep: Preprocessing) -> TrainConfig:
    """``cfg`` with the settings resolved from the model filled in (what ``config.yaml`` records)."""
    return dataclasses.replace(cfg, crop_pct=prep.crop_pct, interpolation=prep.interpolation)


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
