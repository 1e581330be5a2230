"""Every stage trace-curate knows, by name. Imported lazily: `curate --help` must not load
torch, and a pipeline that never verifies code never imports the sandbox."""

from __future__ import annotations

import importlib
import importlib.util

from curate.stage import Stage

STAGES: dict[str, str] = {
    # generators
    "import": "curate.generators.importer:ImportTracesStage",
    "import_problems": "curate.generators.importer:ImportProblemsStage",
    "generate": "curate.generators.generate:GenerateStage",
    # verifiers
    "verify_math": "curate.verifiers.math:MathVerifyStage",
    "verify_code": "curate.verifiers.code:CodeVerifyStage",
    "verify_format": "curate.verifiers.format:FormatVerifyStage",
    "verify_judge": "curate.verifiers.judge:JudgeStage",
    # filters
    "dedup_exact": "curate.filters.exact:ExactDedupStage",
    "dedup_minhash": "curate.filters.minhash:MinHashDedupStage",
    "dedup_semantic": "curate.filters.semantic:SemanticDedupStage",
    "decontaminate": "curate.filters.decontaminate:DecontaminateStage",
    "difficulty": "curate.filters.difficulty:DifficultyStage",
    "select": "curate.filters.select:SelectStage",
    # trainer
    "cache_logits": "curate.trainer.cache:CacheLogitsStage",
    "divergence": "curate.trainer.divergence:DivergenceStage",
    # built-in no-op, for benchmarks and tests of the runner itself
    "passthrough": "curate.builtin:PassthroughStage",
}


class UnknownStageError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def stage_class(name: str) -> type[Stage]:
    """A registered name, or ``package.module:Class`` for a user's own stage."""
    target = name if ":" in name else STAGES.get(name, "")
    if not target:
        known = ", ".join(sorted(available()))
        raise UnknownStageError(f"unknown stage {name!r}; known stages: {known}")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownStageError(f"stage {name!r}: cannot load {target}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise UnknownStageError(f"stage {name!r}: {target} is not a Stage class")
    return cls


def available() -> list[str]:
    """Stage names whose module is present in this install."""
    out = []
    for name, target in STAGES.items():
        module_name = target.partition(":")[0]
        if importlib.util.find_spec(module_name) is not None:
            out.append(name)
    return out
