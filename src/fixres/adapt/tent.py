"""Tent (Wang et al., ICLR 2021, "Tent: fully test-time adaptation by entropy minimization").

Label-free: on unlabelled deployment images, minimise the mean entropy of the model's
predictions over the gamma/beta of every normalisation layer, one SGD step per batch, while
every batch-norm normalises with the statistics of the batch itself (the paper's "test-time
normalisation"); nothing else changes. As in the authors' code: SGD with momentum 0.9, no
weight decay, lr 0.00025 at batch 64 on ImageNet (scaled with the batch here), one step per
batch.

Where fixres differs, and why: the authors adapt *online* (each batch is predicted by the
model as adapted so far) or *episodically* (the model is reset after every batch); both are
inference-time procedures. fixres writes a checkpoint to deploy, so it runs Tent's online
adaptation over the unlabelled set (``tent_passes`` times, batches in a seeded order), always
from the checkpoint it was given, then freezes the result: each batch-norm's running
statistics become the exact moments of its input over the unlabelled images with the adapted
parameters (batch statistics, as the adaptation saw them), so the saved model normalises
deployment images as Tent did. Tent at inference, episodic or online, batch by batch as the
authors evaluate it: ``fixres eval --tent`` (:mod:`fixres.adapt.test_time`).
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..core.errors import FixresError
from ..core.runtime import Runtime, autocast
from .methods import Batches, adaptation_state, average_gradients
from .options import MOMENTUM, AdaptOptions
from .surgery import Plan, set_modes


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's softmax."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def tent(model: nn.Module, plan: Plan, batches: Batches, opts: AdaptOptions, rt: Runtime) -> list[dict]:
    """Tent's steps over ``batches`` (``opts.tent_passes`` passes, labels ignored): the plan's
    normalisations' gamma/beta train, its batch-norms in train mode. One row per pass: the mean
    entropy of the predictions the steps were taken on."""
    history, device = [], rt.device
    with adaptation_state(model, plan) as params:
        optimizer = torch.optim.SGD(params, lr=opts.base_lr, momentum=MOMENTUM)
        for epoch in range(opts.tent_passes):
            set_modes(model, plan)
            sums = torch.zeros(2, dtype=torch.float64, device=device)
            t0 = time.perf_counter()
            for inputs, _ in batches(epoch):
                with autocast(device, rt.amp_dtype):
                    logits = model(*inputs)
                loss = entropy(logits).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if rt.dist.enabled:
                    average_gradients(params, rt.dist)
                optimizer.step()
                sums += torch.stack([loss.detach().double() * len(logits),
                                     torch.tensor(len(logits), dtype=torch.float64, device=device)])
            if rt.dist.enabled:
                torch.distributed.all_reduce(sums)
            total, n = sums.tolist()
            if not n:
                raise FixresError("tent: no batch of unlabelled images could be decoded")
            if not math.isfinite(total):
                raise FixresError(f"tent: the entropy became {total} in pass {epoch + 1}; lower --lr")
            row = {"pass": epoch + 1, "entropy": total / n, "images": int(n), "lr": opts.base_lr,
                   "seconds": round(time.perf_counter() - t0, 3)}
            history.append(row)
            rt.log(f"tent pass {row['pass']}/{opts.tent_passes}  mean entropy {row['entropy']:.4f}  "
                   f"{row['images']} images  {row['seconds']:.2f}s")
    return history
