"""Trainer stage: teacher top-k logit cache (topk-v1), KD student trainer, divergence scores, exports."""
