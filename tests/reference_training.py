"""The references' training loops re-stated as plain code, one process, from their own files; the
recipe tests (tests/test_recipes.py) hold our training step and schedule to them.

* insightface arcface_torch (recognition/arcface_torch): train_v2.py's loop, lr_scheduler.py's
  PolynomialLRWarmup, partial_fc_v2.py's PartialFC_V2 and DistCrossEntropyFunc at world size 1, and
  losses.py's CombinedMarginLoss (with its inter-class filtering).
* the old repository (wujiyang/Face_Pytorch): train.py's loop (SGD with two parameter groups, MultiStepLR
  stepped at the start of each epoch) and margin/ArcMarginProduct.py.

Where a reference draws random numbers on the GPU (Partial FC's sample), the numbers are passed in.
"""

import bisect
import math

import torch
import torch.nn.functional as F
from torch import nn


# ============ arcface_torch ============

class PolynomialLRWarmup(torch.optim.lr_scheduler.LRScheduler):
    """lr_scheduler.py: warm-up to the base lr, then a chained polynomial decay; last_epoch 0 (the
    constructor's own step) keeps the optimizer's lr."""

    def __init__(self, optimizer, warmup_iters, total_iters=5, power=1.0, last_epoch=-1):
        super().__init__(optimizer, last_epoch=last_epoch)
        self.total_iters = total_iters
        self.power = power
        self.warmup_iters = warmup_iters

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch > self.total_iters:
            return [group["lr"] for group in self.optimizer.param_groups]
        if self.last_epoch <= self.warmup_iters:
            return [base_lr * self.last_epoch / self.warmup_iters for base_lr in self.base_lrs]
        l, w, t = self.last_epoch, self.warmup_iters, self.total_iters
        decay_factor = ((1.0 - (l - w) / (t - w)) / (1.0 - (l - 1 - w) / (t - w))) ** self.power
        return [group["lr"] * decay_factor for group in self.optimizer.param_groups]


class CombinedMarginLoss(nn.Module):
    """losses.py: logits are clamped cosines; filtering, then the margin applied in place without gradient."""

    def __init__(self, s, m1, m2, m3, interclass_filtering_threshold=0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.interclass_filtering_threshold = interclass_filtering_threshold

    def forward(self, logits, labels):
        index_positive = torch.where(labels != -1)[0]
        if self.interclass_filtering_threshold > 0:
            with torch.no_grad():
                dirty = (logits > self.interclass_filtering_threshold).float()
                mask = torch.ones([index_positive.size(0), logits.size(1)], device=logits.device)
                mask.scatter_(1, labels[index_positive], 0)
                dirty[index_positive] *= mask
                tensor_mul = 1 - dirty
            logits = tensor_mul * logits
        target_logit = logits[index_positive, labels[index_positive].view(-1)]
        if self.m1 == 1.0 and self.m3 == 0.0:
            with torch.no_grad():
                target_logit.arccos_()
                logits.arccos_()
                final_target_logit = target_logit + self.m2
                logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
                logits.cos_()
            logits = logits * self.s
        elif self.m3 > 0:
            final_target_logit = target_logit - self.m3
            logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
            logits = logits * self.s
        else:
            raise ValueError("CombinedMarginLoss takes (1, m2, 0) or (m1, m2, m3 > 0)")
        return logits


class PartialFC(nn.Module):
    """partial_fc_v2.py's PartialFC_V2 on one process: every class is local; with sample_rate < 1 the
    positive classes plus the top int(sample_rate * C) of `scores` (its torch.rand on the GPU)."""

    def __init__(self, margin_loss, weight, sample_rate=1.0):
        super().__init__()
        self.margin_softmax = margin_loss
        self.weight = nn.Parameter(weight.detach().clone())
        self.num_local = weight.shape[0]
        self.sample_rate = sample_rate
        self.num_sample = int(sample_rate * self.num_local)

    def sample(self, labels, index_positive, scores):
        with torch.no_grad():
            positive = torch.unique(labels[index_positive], sorted=True)
            if self.num_sample - positive.size(0) >= 0:
                perm = scores.clone()
                perm[positive] = 2.0
                index = torch.topk(perm, k=self.num_sample)[1]
                index = index.sort()[0]
            else:
                index = positive
            labels[index_positive] = torch.searchsorted(index, labels[index_positive])
        return self.weight[index]

    def forward(self, embeddings, labels, scores=None):
        labels = labels.long().view(-1, 1).clone()
        index_positive = (0 <= labels) & (labels < self.num_local)
        labels[~index_positive] = -1
        weight = self.sample(labels, index_positive, scores) if self.sample_rate < 1 else self.weight
        logits = F.linear(F.normalize(embeddings), F.normalize(weight)).clamp(-1, 1)
        logits = self.margin_softmax(logits, labels)
        # DistCrossEntropyFunc at world size 1: the softmax, then -mean(log(max(p_target, 1e-30)))
        probabilities = torch.softmax(logits, dim=1)
        return -probabilities.gather(1, labels).clamp_min(1e-30).log().mean()


def arcface_torch_train(backbone, head_weight, micro_batches, *, lr, weight_decay, optimizer, margin_list,
                        sample_rate, interclass_filtering_threshold, gradient_acc, warmup_iters, total_iters,
                        scores=None, s=64.0):
    """train_v2.py's loop (fp32): one optimizer over backbone and Partial FC, a micro-batch's loss
    backpropagated as it is, every `gradient_acc` micro-batches clip the backbone's gradients at 5 and
    step, the scheduler stepped after every micro-batch. `scores(i)`: Partial FC's random numbers for
    micro-batch i (0-based). Returns (loss of each micro-batch, lr of each optimizer step, the head)."""
    margin = CombinedMarginLoss(s, *margin_list, interclass_filtering_threshold)
    partial_fc = PartialFC(margin, head_weight, sample_rate)
    parameters = [{"params": backbone.parameters()}, {"params": partial_fc.parameters()}]
    if optimizer == "sgd":
        opt = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    lr_scheduler = PolynomialLRWarmup(optimizer=opt, warmup_iters=warmup_iters, total_iters=total_iters)
    losses, step_lrs = [], []
    global_step = 0
    for images, labels in micro_batches:
        global_step += 1
        loss = partial_fc(backbone(images), labels, scores(global_step - 1) if scores else None)
        loss.backward()
        if global_step % gradient_acc == 0:
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
            step_lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            opt.zero_grad()
        lr_scheduler.step()
        losses.append(loss.item())
    return losses, step_lrs, partial_fc


# ============ the old repository ============

class ArcMarginProduct(nn.Module):
    """margin/ArcMarginProduct.py: cos(theta + m) by the angle-sum formula, cos - m*sin(m) past pi - m."""

    def __init__(self, weight, s=32.0, m=0.50, easy_margin=False):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.s, self.m, self.easy_margin = s, m, easy_margin
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def forward(self, x, label):
        cosine = F.linear(F.normalize(x), F.normalize(self.weight))
        sine = torch.sqrt(1.0 - torch.pow(cosine, 2))
        phi = cosine * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where((cosine - self.th) > 0, phi, cosine - self.mm)
        one_hot = torch.zeros_like(cosine)
        one_hot.scatter_(1, label.view(-1, 1), 1)
        return ((one_hot * phi) + ((1.0 - one_hot) * cosine)) * self.s


class MultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """torch 0.4 / 1.0's MultiStepLR, which the old repository ran (its README: "evaluated on Pytorch 0.4.0"):
    the closed form base_lr * gamma ** (milestones passed), not today's chained product."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones, self.gamma = sorted(milestones), gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * self.gamma ** bisect.bisect_right(self.milestones, self.last_epoch) for base_lr in self.base_lrs]


def seed_train(net, head_weight, epochs_of_batches, *, lr, milestones, s=32.0, m=0.5):
    """train.py's loop: SGD (Nesterov momentum 0.9, weight decay 5e-4 on the net and the margin),
    MultiStepLR(milestones, 0.1) stepped at the start of each epoch, cross-entropy of the margin's logits.
    Returns (loss of each step, lr of each step, the margin)."""
    margin = ArcMarginProduct(head_weight, s=s, m=m)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer_ft = torch.optim.SGD([{"params": net.parameters(), "weight_decay": 5e-4},
                                    {"params": margin.parameters(), "weight_decay": 5e-4}],
                                   lr=lr, momentum=0.9, nesterov=True)
    exp_lr_scheduler = MultiStepLR(optimizer_ft, milestones=milestones, gamma=0.1)
    losses, step_lrs = [], []
    for batches in epochs_of_batches:
        exp_lr_scheduler.step()
        for images, labels in batches:
            optimizer_ft.zero_grad()
            total_loss = criterion(margin(net(images), labels), labels)
            total_loss.backward()
            step_lrs.append(optimizer_ft.param_groups[0]["lr"])
            optimizer_ft.step()
            losses.append(total_loss.item())
    return losses, step_lrs, margin
