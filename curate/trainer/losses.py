"""Distillation losses on a cached top-k teacher distribution.

The teacher is known only on its top-k ids (raw log-probs at T=1). The tail bucket makes the
comparison exact on what is known: both distributions are reduced to k+1 buckets, the k cached
ids plus "everything else", whose teacher mass is ``1 - sum(p_topk)`` and whose student mass is
the student's exact remaining probability. Without the tail (``tail=False``) both are
renormalised over the k ids (the usual top-k KD approximation).

Temperature ``T``: the student's logits are divided by T before the softmax; the teacher's bucket
log-probs are divided by T and renormalised over the buckets (exact for the top-k when the tail
is small; the tail bucket is tempered as one lump, an approximation the docs state), and the KD
term is scaled by T^2 so its gradient magnitude does not shrink with T (Hinton et al.).

All functions take per-position tensors already aligned: row i of the student logits is the
distribution that predicts the token whose teacher top-k is row i.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

KDLoss = Literal["forward_kl", "reverse_kl", "jsd"]
_TINY = 1e-12


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends, clamped so an empty tail stays finite."""
    x = x.clamp(max=-_TINY)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))).clamp(
        min=math.log(_TINY)
    )


def teacher_buckets(topk_logprobs: torch.Tensor, *, temperature: float = 1.0, tail: bool = True) -> torch.Tensor:
    """[N, k] raw teacher log-probs -> [N, k(+1)] normalised bucket log-probs."""
    lp = topk_logprobs.float()
    if tail:
        lp = torch.cat([lp, _log1mexp(torch.logsumexp(lp, dim=-1, keepdim=True))], dim=-1)
    if temperature != 1.0 or not tail:
        lp = torch.log_softmax(lp / temperature, dim=-1)
    return lp


def student_buckets(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, *, temperature: float = 1.0, tail: bool = True
) -> torch.Tensor:
    """[N, V] student logits -> [N, k(+1)] bucket log-probs on the teacher's ids."""
    log_probs = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    top = log_probs.gather(-1, topk_ids.long())
    if not tail:
        return torch.log_softmax(top, dim=-1)
    return torch.cat([top, _log1mexp(torch.logsumexp(top, dim=-1, keepdim=True))], dim=-1)


def bucket_divergence(t: torch.Tensor, s: torch.Tensor, kind: KDLoss = "forward_kl", beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence between bucket log-probs t (teacher) and s (student)."""
    if kind == "forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if kind == "reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must lie in (0, 1), got {beta}")
        mix = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
        return beta * (t.exp() * (t - mix)).sum(-1) + (1 - beta) * (s.exp() * (s - mix)).sum(-1)
    raise ValueError(f"unknown KD loss {kind!r}: forward_kl, reverse_kl or jsd")


def kd_loss_per_token(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    *,
    kind: KDLoss = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    tail: bool = True,
) -> torch.Tensor:
    t = teacher_buckets(topk_logprobs, temperature=temperature, tail=tail)
    s = student_buckets(student_logits, topk_ids, temperature=temperature, tail=tail)
    return bucket_divergence(t, s, kind, beta) * temperature**2


def ce_loss_per_token(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student_logits.float(), targets.long(), reduction="none")


def combined_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    *,
    mix: float,
    kind: KDLoss = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    tail: bool = True,
) -> dict[str, torch.Tensor]:
    """Sums over positions (callers divide by the tokens of the whole accumulation window):
    ``loss = mix * KD + (1 - mix) * CE``."""
    ce = ce_loss_per_token(student_logits, targets).sum()
    if topk_ids is None or mix == 0.0:
        return {"loss": ce, "ce": ce.detach(), "kd": torch.zeros((), device=ce.device)}
    kd = kd_loss_per_token(student_logits, topk_ids, topk_logprobs, kind=kind, temperature=temperature,
                           beta=beta, tail=tail).sum()
    return {"loss": mix * kd + (1.0 - mix) * ce, "ce": ce.detach(), "kd": kd.detach()}
