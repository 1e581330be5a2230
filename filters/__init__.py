"""Filters: score columns for dedup, decontamination and difficulty; `select` applies the policy."""
