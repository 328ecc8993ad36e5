"""PyTorch reference modules, written from the seed posts (``../shared/seeds/``) with their quirks.

Each class names the seed file it reproduces. They are the ground truth of ``parity_tests/``; do not
"fix" them: where a reference is numerically wrong, the tests document the difference instead.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FocalLossSeed000(nn.Module):
    """``FocalLoss(alpha=1, gamma=2, reduction='mean')`` of ``000_f8f010a8acf11d4d.txt``.

    ``pt = exp(-ce)`` then ``alpha * (1 - pt)**gamma * ce``: scalar alpha, plain mean.
    """

    def __init__(self, alpha=1, gamma=2, reduction="mean"):
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, inputs, targets):
        ce_loss = F.cross_entropy(inputs, targets, reduction="none")
        pt = torch.exp(-ce_loss)
        focal_loss = self.alpha * (1 - pt) ** self.gamma * ce_loss
        if self.reduction == "mean":
            return focal_loss.mean()
        elif self.reduction == "sum":
            return focal_loss.sum()
        return focal_loss


class FocalLossSeed001(nn.Module):
    """``FocalLoss(weight=None, gamma=2., reduction='mean')`` of ``001_2350445a1936b7c1.txt``.

    ``nll_loss((1 - p)**gamma * log_softmax(x), y, weight)``: torch NLL weighting and mean.
    """

    def __init__(self, weight=None, gamma=2.0, reduction="mean"):
        nn.Module.__init__(self)
        self.weight, self.gamma, self.reduction = weight, gamma, reduction

    def forward(self, input_tensor, target_tensor):
        log_prob = F.log_softmax(input_tensor, dim=-1)
        prob = torch.exp(log_prob)
        return F.nll_loss(
            ((1 - prob) ** self.gamma) * log_prob,
            target_tensor,
            weight=self.weight,
            reduction=self.reduction,
        )


class FocalLossSeed003(nn.Module):
    """``FocalLoss(alpha, gamma=2, with_logits=True)`` of ``003_2cd919201b34d348.txt``.

    Multi-class branch: ``p = softmax(x)[y] + 1e-8``, ``-alpha[y] (1 - p)**gamma log p``, plain
    mean. The binary branch (``x`` of shape ``(B,)`` or ``(B, 1)``) ignores the target; it is
    reproduced as written and only used by the test that documents the bug.
    """

    def __init__(self, alpha, gamma=2, with_logits=True):
        super().__init__()
        self.gamma = gamma
        self.alpha = torch.tensor([alpha]) if isinstance(alpha, float) else torch.tensor(alpha)
        self.smooth = 1e-8
        self.with_logits = with_logits

    def _binary_class(self, input, target):
        prob = torch.sigmoid(input) if self.with_logits else input
        prob = (
            prob + self.smooth
        )  # the seed writes `prob += ...`, in place on a leaf when not with_logits
        alpha = self.alpha.to(input.dtype)
        return -alpha * torch.pow(torch.sub(1.0, prob), self.gamma) * torch.log(prob)

    def _multiple_class(self, input, target):
        prob = F.softmax(input, dim=1) if self.with_logits else input
        alpha = self.alpha.to(input.dtype)
        alpha = alpha.gather(0, target)
        target = target.view(-1, 1)
        prob = prob.gather(1, target).view(-1) + self.smooth
        logpt = torch.log(prob)
        return -alpha * torch.pow(torch.sub(1.0, prob), self.gamma) * logpt

    def forward(self, input, target):
        if len(input.shape) > 1 and input.shape[-1] != 1:
            loss = self._multiple_class(input, target)
        else:
            loss = self._binary_class(input, target)
        return loss.mean()


class LabelSmoothingLoss(nn.Module):
    """``LabelSmoothingLoss(classes, smoothing, dim=-1)`` of ``001``, ``002`` and ``004``.

    Target ``1 - smoothing``, others ``smoothing / (classes - 1)``, mean over the batch.
    """

    def __init__(self, classes, smoothing=0.0, dim=-1):
        super().__init__()
        self.confidence = 1.0 - smoothing
        self.smoothing = smoothing
        self.cls = classes
        self.dim = dim

    def forward(self, pred, target):
        pred = pred.log_softmax(dim=self.dim)
        with torch.no_grad():
            true_dist = torch.zeros_like(pred)
            true_dist.fill_(self.smoothing / (self.cls - 1))
            true_dist.scatter_(1, target.data.unsqueeze(1), self.confidence)
        return torch.mean(torch.sum(-true_dist * pred, dim=self.dim))


class F1Loss(nn.Module):
    """``F1Loss(classes, epsilon=1e-7)`` of ``001_2350445a1936b7c1.txt`` (002's copy is broken)."""

    def __init__(self, classes=3, epsilon=1e-7):
        super().__init__()
        self.classes = classes
        self.epsilon = epsilon

    def per_class_f1(self, y_pred, y_true):
        """The seed's forward up to (not including) the clamp."""
        assert y_pred.ndim == 2
        assert y_true.ndim == 1
        y_true = F.one_hot(y_true, self.classes).to(y_pred.dtype)  # the seed casts to float32
        y_pred = F.softmax(y_pred, dim=1)
        tp = (y_true * y_pred).sum(dim=0)
        fp = ((1 - y_true) * y_pred).sum(dim=0)
        fn = (y_true * (1 - y_pred)).sum(dim=0)
        precision = tp / (tp + fp + self.epsilon)
        recall = tp / (tp + fn + self.epsilon)
        return 2 * (precision * recall) / (precision + recall + self.epsilon)

    def forward(self, y_pred, y_true):
        f1 = self.per_class_f1(y_pred, y_true).clamp(min=self.epsilon, max=1 - self.epsilon)
        return 1 - f1.mean()


class DisturbLabel(nn.Module):
    """``DisturbLabel(alpha, num_classes)`` of ``004_1e0f039da5020c04.txt`` (alpha in percent)."""

    def __init__(self, alpha, num_classes):
        super().__init__()
        self.alpha = alpha
        self.C = num_classes
        self.p_c = 1 - ((self.C - 1) / self.C) * (alpha / 100)
        self.p_i = (1 - self.p_c) / (self.C - 1)

    def forward(self, y):
        y_tensor = y.type(torch.LongTensor).view(-1, 1)
        y_one_hot = torch.ones(y_tensor.size()[0], self.C) * self.p_i
        y_one_hot.scatter_(1, y_tensor, self.p_c)
        y_one_hot = y_one_hot.view(*(tuple(y.shape) + (-1,)))
        distribution = torch.distributions.OneHotCategorical(y_one_hot)
        return distribution.sample().max(dim=-1)[1]


def torchvision_sigmoid_focal_loss(
    inputs, targets, alpha: float = 0.25, gamma: float = 2, reduction: str = "none"
):
    """``torchvision.ops.sigmoid_focal_loss`` (torchvision 0.2x), copied: torchvision does not
    install beside the CPU torch wheel here."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def focal_reference(
    logits, labels, *, gamma, alpha=None, weight=None, ignore_index=None, reduction="mean"
):
    """All focal options at once, composed from torch ops in the seeds' style (no seed combines
    them).

    ``-alpha[y] * w[y] * (1 - p_y)**gamma * log p_y``; ignored examples give 0; ``"mean"`` divides
    by the sum of ``w[y]`` over counted examples (by their number without ``weight``), as
    ``nll_loss``.
    """
    counted = torch.ones_like(labels, dtype=torch.bool)
    if ignore_index is not None:
        counted = labels != ignore_index
    safe = torch.where(counted, labels, torch.zeros_like(labels))
    log_prob = F.log_softmax(logits, dim=-1).gather(-1, safe[:, None])[:, 0]
    loss = -((1 - torch.exp(log_prob)) ** gamma) * log_prob
    if alpha is not None:
        loss = loss * (alpha if alpha.ndim == 0 else alpha[safe])
    denom = counted.to(logits.dtype)
    if weight is not None:
        loss = loss * weight[safe]
        denom = denom * weight[safe]
    loss = torch.where(counted, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / denom.sum()


def label_smoothing_others_reference(
    logits, labels, *, smoothing, weight=None, ignore_index=None, reduction="mean"
):
    """The seeds' "others" smoothing extended with torch's weight/ignore rules (no seed has them).

    ``sum_j -true_dist_j * w_j * log p_j`` with the seeds' ``true_dist``; ``"mean"`` divides by the
    sum of ``w[y]`` over counted examples, as ``cross_entropy(weight=..., label_smoothing=...)``
    does.
    """
    num_classes = logits.shape[-1]
    counted = torch.ones_like(labels, dtype=torch.bool)
    if ignore_index is not None:
        counted = labels != ignore_index
    safe = torch.where(counted, labels, torch.zeros_like(labels))
    log_prob = F.log_softmax(logits, dim=-1)
    true_dist = torch.full_like(log_prob, smoothing / (num_classes - 1))
    true_dist.scatter_(1, safe[:, None], 1 - smoothing)
    w = torch.ones(num_classes, dtype=logits.dtype) if weight is None else weight
    loss = torch.sum(-true_dist * w * log_prob, dim=-1)
    loss = torch.where(counted, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / torch.where(counted, w[safe], torch.zeros_like(loss)).sum()
