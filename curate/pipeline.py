"""Pipelines: a YAML list of stages with their configs, run in order into one run directory.

```yaml
name: demo
steps:
  - stage: import
    config: {paths: ["${CURATE_DATA}/demo/traces.jsonl.gz"], preset: auto}
  - stage: verify_math
  - stage: select
    id: select_strict          # optional: names the step folder (default: the stage name)
    config: {policy: policies/default.yaml}
```

Every step is validated (stage known, config keys and types right) before anything runs. Each
step reads the previous step's output unless it names another step with `input: <id>`.
`${CURATE_DATA}` is the packaged data folder, `${PIPELINE_DIR}` the YAML's folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from curate.executors import Executor
from curate.io import atomic_write_bytes, atomic_write_json
from curate.manifest import Manifest
from curate.registry import stage_class
from curate.stage import SourceStage, Stage

DATA_DIR = Path(__file__).resolve().parent / "data"
_VAR = re.compile(r"\$\{(\w+)\}")


class PipelineError(ValueError):
    pass


@dataclass
class Step:
    index: int
    id: str
    stage: Stage
    input: str | None  # id of the step whose output this one reads

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}-{self.id}"


@dataclass
class Pipeline:
    name: str
    path: Path | None
    steps: list[Step]
    raw: dict[str, Any]
    text: str


def _expand(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            key = match.group(1)
            if key in variables:
                return variables[key]
            if key in os.environ:
                return os.environ[key]
            raise PipelineError(f"unknown variable ${{{key}}} (known: {', '.join(variables)})")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, variables) for k, v in value.items()}
    return value


def _format_validation(step_label: str, stage_name: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            lines.append(f"{step_label}: unknown config key {loc!r} for stage {stage_name}")
        else:
            lines.append(f"{step_label}: config {loc!r}: {err['msg']}")
    return "\n".join(lines)


def parse_pipeline(data: dict[str, Any], *, path: Path | None = None, text: str = "") -> Pipeline:
    if not isinstance(data, dict) or "steps" not in data:
        raise PipelineError(f"{path or 'pipeline'}: expected a mapping with a 'steps' list")
    unknown_top = sorted(set(data) - {"name", "description", "steps"})
    if unknown_top:
        raise PipelineError(f"{path or 'pipeline'}: unknown top-level key(s) {unknown_top}")
    variables = {"CURATE_DATA": str(DATA_DIR), "PIPELINE_DIR": str(path.parent.resolve()) if path else "."}
    steps: list[Step] = []
    errors: list[str] = []
    ids: set[str] = set()
    for i, raw in enumerate(data["steps"] or [], start=1):
        label = f"{path or 'pipeline'}: step {i}"
        if not isinstance(raw, dict) or "stage" not in raw:
            errors.append(f"{label}: each step needs a 'stage'")
            continue
        extra = sorted(set(raw) - {"stage", "id", "config", "input"})
        if extra:
            errors.append(f"{label}: unknown step key(s) {extra} (allowed: stage, id, config, input)")
            continue
        try:
            cls = stage_class(raw["stage"])
        except KeyError as exc:
            errors.append(f"{label}: {exc}")
            continue
        step_id = raw.get("id") or cls.name
        if step_id in ids:
            errors.append(f"{label}: step id {step_id!r} is used twice; give one an 'id'")
            continue
        if raw.get("input") and raw["input"] not in ids:
            errors.append(f"{label}: input {raw['input']!r} is not an earlier step id")
        ids.add(step_id)
        try:
            config = cls.config_model.model_validate(_expand(raw.get("config") or {}, variables))
        except ValidationError as exc:
            errors.append(_format_validation(label, raw["stage"], exc))
            continue
        except (ValueError, PipelineError) as exc:
            errors.append(f"{label}: {exc}")
            continue
        steps.append(Step(i, step_id, cls(config), raw.get("input")))
    if errors:
        raise PipelineError("pipeline is invalid:\n  " + "\n  ".join(errors))
    if steps and not isinstance(steps[0].stage, SourceStage) and steps[0].input is None:
        raise PipelineError(f"{path or 'pipeline'}: the first step must read files (import, import_problems)")
    return Pipeline(data.get("name") or (path.stem if path else "run"), path, steps, data, text)


def load_pipeline(path: Path) -> Pipeline:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"pipeline file {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}") from exc
    return parse_pipeline(data, path=path, text=text)


def run_pipeline(
    pipeline: Pipeline,
    out_dir: Path,
    *,
    executor: Executor | None = None,
    progress: bool = True,
    only: list[str] | None = None,
) -> list[Manifest]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if pipeline.text:
        atomic_write_bytes(out_dir / "pipeline.yaml", pipeline.text.encode())
    atomic_write_json(
        out_dir / "_run.json",
        {"name": pipeline.name, "pipeline": str(pipeline.path) if pipeline.path else None,
         "steps": [{"id": s.id, "stage": s.stage.name, "dir": s.dirname} for s in pipeline.steps]},
    )
    from curate.runner import run_stage

    by_id: dict[str, Step] = {}
    manifests = []
    previous: Step | None = None
    for step in pipeline.steps:
        source = by_id[step.input] if step.input else previous
        input_dir = out_dir / source.dirname if source and not isinstance(step.stage, SourceStage) else None
        if only is None or step.id in only:
            manifests.append(
                run_stage(step.stage, out_dir=out_dir / step.dirname, input_dir=input_dir, executor=executor,
                          step=step.dirname, progress=progress)
            )
        by_id[step.id] = step
        previous = step
    return manifests
