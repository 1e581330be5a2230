"""Which steps of a run a card describes: the curated table, the scored table before selection,
and the extra configs (select's side outputs such as negatives, cached logits)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from curate.io import part_files
from curate.runs import StepInfo, list_steps

# Stages whose output is a published config of its own rather than the curated traces.
LOGIT_STAGES = ("cache_logits",)


class CardError(ValueError):
    """A run that cannot be described (missing, unfinished, empty); the message says why."""


@dataclass
class RunLayout:
    run: Path
    name: str
    steps: list[StepInfo]
    curated: StepInfo  # the final traces step: what a trainer loads
    scored: StepInfo  # every trace with all its scores (the step selection read), for rates
    select: StepInfo | None
    # config name -> Parquet shards, in the order they are declared (curated first)
    configs: dict[str, list[Path]] = field(default_factory=dict)

    def step_by_stage(self, stage: str) -> list[StepInfo]:
        return [s for s in self.steps if s.manifest and s.manifest.stage == stage]


def _run_name(run: Path) -> str:
    meta = run / "_run.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text()).get("name") or run.name
        except json.JSONDecodeError:
            pass
    return run.resolve().name


def resolve_layout(run: Path) -> RunLayout:
    run = Path(run)
    if not run.is_dir():
        raise CardError(f"run {run} does not exist")
    steps = list_steps(run)
    if not steps:
        raise CardError(f"{run} has no steps (expected folders like 01-import with a _manifest.json)")
    unfinished = [s.path.name for s in steps if not s.complete]
    if unfinished:
        raise CardError(f"step(s) {', '.join(unfinished)} of {run} did not finish; run the pipeline again first")
    traces = [s for s in steps if s.table == "traces" and s.manifest.stage not in LOGIT_STAGES]
    if not traces:
        raise CardError(f"{run} has no traces step to describe")
    selects = [s for s in traces if s.manifest.stage == "select"]
    curated = selects[-1] if selects else traces[-1]
    before = [s for s in traces if s.index < curated.index and s.manifest.stage != "select"]
    scored = before[-1] if selects and before else curated
    for step in {curated.path: curated, scored.path: scored}.values():
        if not part_files(step.path):
            raise CardError(f"step {step.path.name} has no Parquet shards")
    configs = {"curated": part_files(curated.path)}
    for side in sorted(p for p in curated.path.iterdir() if p.is_dir() and part_files(p)):
        configs[side.name] = part_files(side)
    for step in steps:
        if step.manifest.stage in LOGIT_STAGES and part_files(step.path):
            configs["logits"] = part_files(step.path)
    return RunLayout(run, _run_name(run), steps, curated, scored, selects[-1] if selects else None, configs)
