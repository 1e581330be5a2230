"""Teacher specs: which model answers, through which backend, with which sampling and prompt.

A teacher is written as ``KIND:TARGET`` plus options:

* ``vllm:MODEL_PATH``        vLLM's offline engine (local folder or hub id already in the cache)
* ``openai:BASE_URL#MODEL``  any OpenAI-compatible server (vLLM serve, SGLang, TGI, llama.cpp
  server, hosted APIs); the key comes from the environment variable named by ``api_key_env``
* ``hf:MODEL_PATH``          transformers ``generate`` on CPU or GPU, for small models

On the command line a teacher is one string, ``SPEC [key=value ...]`` (``--teacher
"vllm:Qwen/QwQ-32B n=4 temperature=0.6"``); in a pipeline YAML it is a mapping with ``spec`` and
the same keys. Keys a teacher leaves unset are taken from the stage-level options, so shared
settings are written once.

The API key itself is never stored: configs, manifests and cards only ever see the variable name.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

BackendKind = Literal["vllm", "openai", "hf"]
BACKENDS: tuple[str, ...] = ("vllm", "openai", "hf")

# Named prompt templates; any other value is a template with a ``{prompt}`` placeholder (filled by
# plain replacement, so braces such as \boxed{} need no escaping).
PROMPT_TEMPLATES = {
    "plain": "{prompt}",
    # DeepSeek-R1's recommended instruction for math (also used by open-r1's generation scripts).
    "math": "{prompt}\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "code": "{prompt}\n\nThink it through, then give the complete solution in one ```python code block.",
}


class TeacherSpecError(ValueError):
    pass


class TeacherOptions(BaseModel):
    """Per-teacher settings; also the stage-level defaults every teacher inherits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1, ge=1, description="Samples per problem.")
    seed: int = Field(0, ge=0, description="Base seed; sample i of every problem uses seed + i.")
    temperature: float = Field(0.6, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    top_k: int = Field(-1, description="Top-k sampling (-1: off).")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Min-p sampling (0: off).")
    max_tokens: int = Field(4096, ge=1, description="Most completion tokens per sample.")
    repetition_penalty: float = Field(1.0, gt=0.0, description="1.0: off.")
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = Field([], description="Extra stop strings.")
    chat: bool = Field(True, description="Apply the model's chat template (false: raw prompt).")
    system_prompt: str | None = Field(None, description="System message (chat mode only).")
    prompt_template: str = Field(
        "plain", description="plain, math, code, or a template with a {prompt} placeholder."
    )
    logprobs: int = Field(0, ge=0, le=64, description="Top-k log-probs per completion token (0: off).")
    api_key_env: str | None = Field(None, description="openai: environment variable holding the API key.")
    max_in_flight: int = Field(64, ge=1, description="openai: most requests in flight per teacher.")
    requests_per_minute: float | None = Field(None, gt=0, description="openai: request rate limit.")
    tokens_per_minute: float | None = Field(None, gt=0, description="openai: token rate limit (prompt + completion).")
    max_retries: int = Field(6, ge=0, description="openai: retries on 429, 5xx, timeouts, dropped connections.")
    timeout_s: float = Field(600.0, gt=0, description="openai: seconds per request before it counts as timed out.")
    backoff_s: float = Field(1.0, gt=0, description="openai: first retry delay (doubles, with jitter).")
    max_backoff_s: float = Field(60.0, gt=0, description="openai: longest retry delay.")
    extra_body: dict[str, Any] = Field(
        {},
        description="openai: extra JSON fields for every request (null removes a field the client sets).",
    )
    engine_args: dict[str, Any] = Field(
        {},
        description="vllm: keyword arguments of vllm.LLM; hf: of from_pretrained (e.g. dtype).",
    )
    python: str | None = Field(
        None, description="vllm: run the engine in this interpreter (e.g. .venv-vllm/bin/python)."
    )
    batch_size: int = Field(8, ge=1, description="hf: prompts per generate() call.")
    device: str = Field("auto", description="hf: cpu, cuda, cuda:1 or auto.")

    @field_validator("prompt_template")
    @classmethod
    def _template_has_prompt(cls, value: str) -> str:
        text = PROMPT_TEMPLATES.get(value, value)
        if "{prompt}" not in text:
            raise ValueError(f"prompt_template {value!r} has no {{prompt}} placeholder (or use plain, math, code)")
        return value


class TeacherConfig(TeacherOptions):
    """One teacher in a pipeline YAML: ``spec`` plus any `TeacherOptions` key."""

    spec: str = Field(description="vllm:MODEL_PATH, openai:BASE_URL#MODEL or hf:MODEL_PATH.")
    name: str | None = Field(None, description="Value of the teacher column (default: the model).")
    revision: str | None = Field(None, description="Teacher revision to record (default: detected).")

    @field_validator("spec")
    @classmethod
    def _spec_parses(cls, value: str) -> str:
        parse_spec(value)
        return value


@dataclass(frozen=True)
class Teacher:
    """A resolved teacher: backend, where it lives, and the options it runs with."""

    name: str
    kind: str
    model: str  # local path or hub id (vllm, hf); the served model name (openai)
    base_url: str | None  # openai only
    options: TeacherOptions
    revision: str | None  # as configured; backends may detect one in setup

    @property
    def template(self) -> str:
        return PROMPT_TEMPLATES.get(self.options.prompt_template, self.options.prompt_template)

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters recorded with every row (the per-request seed is added)."""
        o = self.options
        params: dict[str, Any] = {
            "temperature": o.temperature, "top_p": o.top_p, "max_tokens": o.max_tokens,
            "top_k": o.top_k, "min_p": o.min_p, "repetition_penalty": o.repetition_penalty,
            "presence_penalty": o.presence_penalty, "frequency_penalty": o.frequency_penalty,
        }
        if o.stop:
            params["stop"] = list(o.stop)
        if o.logprobs:
            params["logprobs"] = o.logprobs
        return params

    def public_url(self) -> str | None:
        return redact_url(self.base_url) if self.base_url else None


def redact_url(url: str) -> str:
    """``url`` without user:password (never written to rows, logs or manifests)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``KIND:TARGET`` -> (kind, model, base_url)."""
    kind, sep, target = spec.strip().partition(":")
    if not sep or kind not in BACKENDS:
        raise TeacherSpecError(
            f"teacher spec {spec!r}: expected vllm:MODEL_PATH, openai:BASE_URL#MODEL or hf:MODEL_PATH"
        )
    if not target:
        raise TeacherSpecError(f"teacher spec {spec!r}: nothing after {kind}:")
    if kind != "openai":
        return kind, target, None
    base_url, hash_sep, model = target.rpartition("#")
    if not hash_sep or not base_url or not model:
        raise TeacherSpecError(f"teacher spec {spec!r}: openai teachers are openai:BASE_URL#MODEL")
    if not base_url.startswith(("http://", "https://")):
        raise TeacherSpecError(f"teacher spec {spec!r}: BASE_URL must start with http:// or https://")
    return kind, model, base_url.rstrip("/")


def parse_teacher_string(text: str) -> dict[str, Any]:
    """``"SPEC key=value ..."`` (the CLI form) -> a `TeacherConfig` mapping. Values are YAML
    scalars or flow collections (``stop=["</answer>"]``, ``engine_args={dtype: bfloat16}``)."""
    try:
        parts = shlex.split(text)
    except ValueError as exc:
        raise TeacherSpecError(f"teacher {text!r}: {exc}") from None
    if not parts:
        raise TeacherSpecError("empty teacher spec")
    data: dict[str, Any] = {"spec": parts[0]}
    for item in parts[1:]:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise TeacherSpecError(f"teacher {text!r}: option {item!r} must look like key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if key in ("name", "revision", "system_prompt", "prompt_template", "api_key_env", "python", "device"):
            value = raw  # keep text fields verbatim (a name like 1.5 must stay a string)
        data[key.replace("-", "_")] = value
    return data


def resolve_teachers(
    defaults: TeacherOptions, strings: list[str], configs: list[TeacherConfig]
) -> list[Teacher]:
    """Merge stage-level defaults with each teacher's own settings; names must be unique."""
    entries: list[TeacherConfig] = []
    for text in strings:
        data = parse_teacher_string(text)  # raises TeacherSpecError naming the string
        try:
            entries.append(TeacherConfig.model_validate(data))
        except ValueError as exc:
            raise TeacherSpecError(f"--teacher {text!r}: {exc}") from None
    entries.extend(configs)
    base = defaults.model_dump(include=set(TeacherOptions.model_fields))
    teachers: list[Teacher] = []
    for entry in entries:
        own = entry.model_dump(include=entry.model_fields_set & set(TeacherOptions.model_fields))
        options = TeacherOptions.model_validate({**base, **own})
        kind, model, base_url = parse_spec(entry.spec)
        name = entry.name or model
        teachers.append(Teacher(name=name, kind=kind, model=model, base_url=base_url, options=options,
                                revision=entry.revision))
    names = [t.name for t in teachers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TeacherSpecError(
            f"teacher name(s) {duplicates} used twice: give each teacher its own name= (it is part of the row key)"
        )
    return teachers


def local_revision(model: str) -> str:
    """A revision for a local model folder: the hub commit when it is a hub cache snapshot,
    else a hash of its config, tokenizer and weight file names and sizes (weights are not read)."""
    path = Path(model)
    if not path.is_dir():
        return model  # a hub id resolved by the backend; it reports the commit when it can
    if path.parent.name == "snapshots" and len(path.name) == 40:
        return path.name
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if not file.is_file():
            continue
        digest.update(file.name.encode())
        if file.suffix in (".json", ".jinja", ".model", ".txt"):
            digest.update(file.read_bytes())
        else:
            digest.update(str(file.stat().st_size).encode())
    return f"local-{digest.hexdigest()[:16]}"


def describe(teachers: list[Teacher]) -> list[dict[str, Any]]:
    """Provenance of the teachers for manifests and logs (no secrets: the key's variable only)."""
    return [
        {"name": t.name, "backend": t.kind, "model": t.model, "base_url": t.public_url(),
         "n": t.options.n, "sampling": t.sampling(), "api_key_env": t.options.api_key_env}
        for t in teachers
    ]


def sampling_json(params: dict[str, Any], seed: int) -> str:
    return json.dumps({**params, "n": 1, "seed": seed}, sort_keys=True, separators=(",", ":"))
