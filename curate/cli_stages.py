"""One CLI command per registered stage, built from the stage's pydantic config.

A config field becomes an option: bools are --flag/--no-flag, scalars take a value, list fields
repeat (`--against math500 --against aime24`), dict[str, str] fields repeat KEY=VALUE, and
anything richer takes JSON. Stages that read files take them as arguments and `--out RUN`; the
others take the run directory, read its latest finished step and append their own step to it.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError

from curate.cli_common import fail, print_manifest
from curate.registry import STAGES, stage_class
from curate.stage import SourceStage, Stage


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _kind(annotation: Any) -> str:
    ann = _unwrap(annotation)
    origin = typing.get_origin(ann)
    if ann is bool:
        return "bool"
    if ann in (int, float, str, Path):
        return "scalar"
    if origin is typing.Literal:
        return "choice"
    if origin in (list, tuple) and typing.get_args(ann) and typing.get_args(ann)[0] in (str, int, float, Path):
        return "list"
    if origin is dict and typing.get_args(ann) == (str, str):
        return "dict"
    return "json"


def _parameter(name: str, field: Any) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    kind = _kind(field.annotation)
    default_text = "" if field.is_required() else f" [default: {field.default!r}]"
    help_text = (field.description or "") + default_text
    if kind == "bool":
        option, ann = typer.Option(None, f"{flag}/--no-{name.replace('_', '-')}", help=help_text), bool | None
    elif kind == "choice":
        choices = ", ".join(str(a) for a in typing.get_args(_unwrap(field.annotation)))
        option, ann = typer.Option(None, flag, help=f"One of: {choices}.{default_text}"), str | None
    elif kind == "scalar":
        base = _unwrap(field.annotation)
        ann = (base if base in (int, float) else str) | None
        option = typer.Option(None, flag, help=help_text)
    elif kind in ("list", "dict"):
        metavar = "KEY=VALUE" if kind == "dict" else "VALUE"
        option, ann = typer.Option(None, flag, metavar=metavar, help=help_text + " (repeatable)"), list[str] | None
    else:
        option, ann = typer.Option(None, flag, metavar="JSON", help=help_text + " (JSON)"), str | None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=ann)


def config_from_options(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    data: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        value = values.get(name)
        kind = _kind(field.annotation)
        if value is None or (kind in ("list", "dict") and not value):
            continue
        if kind == "dict":
            pairs = {}
            for item in value:
                key, sep, val = item.partition("=")
                if not sep:
                    fail(f"--{name.replace('_', '-')}: {item!r} must look like KEY=VALUE")
                pairs[key] = val
            data[name] = pairs
        elif kind == "json":
            try:
                data[name] = json.loads(value)
            except json.JSONDecodeError:
                data[name] = value  # a plain string (e.g. a path) for str-or-structure fields
        else:
            data[name] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"--{'.'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
        fail("invalid options:\n  " + "\n  ".join(lines))
        raise  # unreachable: fail() exits


def _run_source(stage: Stage, out: Path, workers: int | None, engine: str) -> None:
    from curate.executors import make_executor
    from curate.runner import run_stage
    from curate.runs import list_steps

    out.mkdir(parents=True, exist_ok=True)
    steps = list_steps(out)
    same = [s for s in steps if s.id == stage.name]
    index = same[-1].index if same else (steps[-1].index + 1 if steps else 1)
    target = out / f"{index:02d}-{stage.name}"
    print_manifest(run_stage(stage, out_dir=target, executor=make_executor(engine, workers=workers)), target)


def _run_map(stage: Stage, run: Path, input_dir: Path | None, workers: int | None, engine: str) -> None:
    from curate.executors import make_executor
    from curate.runner import run_stage
    from curate.runs import list_steps

    if not run.is_dir() and input_dir is None:
        fail(f"run {run} does not exist; start it with `curate import ... --out {run}`")
    run.mkdir(parents=True, exist_ok=True)
    all_steps = list_steps(run)
    steps = [s for s in all_steps if s.complete]
    if not steps and input_dir is None:
        fail(f"{run} has no finished step to read; run `curate import` first or pass --input")
    last = steps[-1] if steps else None
    killed = all_steps[-1] if all_steps and not all_steps[-1].complete else None
    if killed is not None and killed.id == stage.name and input_dir is None:
        # The same command was killed before it finished: resume into its folder (the runner keeps
        # finished units, stages their finished batches) instead of starting over in a new step.
        target, source = killed.path, (last.path if last else None)
    elif last is not None and last.id == stage.name and input_dir is None:
        # Re-running the last stage (e.g. select with a new threshold) replaces it in place.
        target, source = last.path, (steps[-2].path if len(steps) > 1 else None)
    else:
        index = max((s.index for s in all_steps), default=0) + 1
        target, source = run / f"{index:02d}-{stage.name}", (last.path if last else None)
    source = input_dir or source
    print_manifest(run_stage(stage, out_dir=target, input_dir=source, executor=make_executor(engine, workers=workers)),
                   target)


def _command(cls: type[Stage]):
    model = cls.config_model
    is_source = issubclass(cls, SourceStage)
    fields = [f for f in model.model_fields if not (is_source and f == "paths")]
    params: list[inspect.Parameter] = []
    if is_source:
        params += [
            inspect.Parameter("paths", inspect.Parameter.KEYWORD_ONLY, annotation=list[Path],
                              default=typer.Argument(..., help="Input files or datasets folders.")),
            inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                              default=typer.Option(..., "--out", help="Run directory (runs/<name>).")),
        ]
    else:
        params += [
            inspect.Parameter("run", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                              default=typer.Argument(..., help="Run directory (runs/<name>).")),
            inspect.Parameter("input_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                              default=typer.Option(None, "--input",
                                                   help="Read this step folder or Parquet path instead of the run's latest step.")),
        ]
    reserved = {p.name for p in params}
    params += [_parameter(f, model.model_fields[f]) for f in fields if f not in reserved]
    # A config may define its own `workers` (e.g. a sandbox pool size); then it keeps that name
    # and the runner uses its default number of worker processes.
    common = {
        "workers": (int | None, typer.Option(None, help="Worker processes [default: all cores].")),
        "engine": (str, typer.Option("local", help="local, inprocess or ray.")),
    }
    runner_options = [name for name in common if name not in model.model_fields]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=common[name][0],
                                 default=common[name][1]) for name in runner_options]

    def command(**kwargs):
        workers = kwargs.pop("workers") if "workers" in runner_options else None
        engine = kwargs.pop("engine") if "engine" in runner_options else "local"
        if is_source:
            paths, out = kwargs.pop("paths"), kwargs.pop("out")
            kwargs["paths"] = [str(p) for p in paths]
            _run_source(cls(config_from_options(model, kwargs)), out, workers, engine)
        else:
            run, input_dir = kwargs.pop("run"), kwargs.pop("input_dir")
            _run_map(cls(config_from_options(model, kwargs)), run, input_dir, workers, engine)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = cls.name
    command.__doc__ = f"{cls.description}\n\n\b\nExample:\n  {cls.example}" if cls.example else cls.description
    return command


def add_stage_commands(app: typer.Typer) -> None:
    import importlib.util

    groups: dict[tuple[str, ...], typer.Typer] = {(): app}
    for name, target in STAGES.items():
        if importlib.util.find_spec(target.partition(":")[0]) is None:
            continue
        try:
            cls = stage_class(name)
        except Exception:  # a stage module under construction must not break the whole CLI
            continue
        path = cls.cli or (name,)
        for depth in range(1, len(path)):
            key = path[:depth]
            if key not in groups:
                groups[key] = typer.Typer(help=f"{' '.join(key)} stages", no_args_is_help=True)
                groups[key[:-1]].add_typer(groups[key], name=key[-1])
        groups[path[:-1]].command(path[-1], help=_command(cls).__doc__, short_help=cls.description)(_command(cls))
