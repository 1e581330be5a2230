"""Small real runs for the card tests: synthetic traces through the importer and the runner
(import -> verify_math -> verify_format -> dedup_exact -> difficulty -> decontaminate -> select),
plus a helper that parses the Markdown tables of a card back into rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from curate.executors import InProcessExecutor
from curate.pipeline import parse_pipeline, run_pipeline
from tests.conftest import write_jsonl

TEACHERS = {
    "teacher-a": {"temperature": 0.6, "top_p": 0.95},
    "teacher-b": {"temperature": 1.0, "max_tokens": 4096},
    "teacher-c": {"temperature": 0.7},
}
# (prompt, answer, source); the `bench-*` prompts are benchmark items too (decontamination hits)
PROBLEMS = [
    (f"Compute the value of {a} plus {b} and give the final result as an integer number please.", str(a + b),
     "synth-a" if a % 2 else "synth-nc")
    for a, b in [(12, 30), (7, 8), (101, 202), (55, 45), (9, 9), (1000, 24), (3, 4), (64, 36)]
]
BENCH_PROMPTS = {0: "bench-item-1", 3: "bench-item-2"}


def trace_rows(licenses: dict[str, str]) -> list[dict]:
    """Per problem: teacher-a always right, teacher-b right on even problems, teacher-c wrong or
    without an answer; one exact duplicate response (teacher-c copies teacher-a on problem 1)."""
    rows = []
    for i, (prompt, answer, source) in enumerate(PROBLEMS):
        for t_index, (teacher, params) in enumerate(TEACHERS.items()):
            right = teacher == "teacher-a" or (teacher == "teacher-b" and i % 2 == 0)
            given = answer if right else str(int(answer) + 1)
            thinking = " ".join(f"step {k}: add the numbers carefully" for k in range(3 + 7 * t_index + i))
            response = f"<think>{thinking}</think>The answer is \\boxed{{{given}}}."
            if teacher == "teacher-c" and i == 5:
                response = "<think>I am not sure</think>No idea."
            rows.append({
                "prompt": prompt, "response": response, "teacher": teacher, "reference_answer": answer,
                "source": source, "license": licenses[source], "domain": "math",
                "sampling_params": json.dumps(params), "completion_tokens": 40 + 13 * i + 29 * t_index,
            })
    dup = next(r for r in rows if r["teacher"] == "teacher-a" and r["prompt"] == PROBLEMS[1][0])
    rows.append({**dup, "teacher": "teacher-c", "completion_tokens": 999})
    return rows


def build_run(root: Path, *, licenses: dict[str, str] | None = None, steps: str = "full") -> Path:
    """A finished run under root/run. steps: "full" or "import" (import only)."""
    licenses = licenses or {"synth-a": "apache-2.0", "synth-nc": "apache-2.0"}
    root.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(root / "traces.jsonl", trace_rows(licenses))
    bench = write_jsonl(root / "bench.jsonl", [
        {"problem": PROBLEMS[i][0], "id": name} for i, name in BENCH_PROMPTS.items()
    ] + [{"problem": "An unrelated benchmark question about the area of a circle of radius seven.", "id": "x"}])
    pipeline = {"name": "cards-small", "steps": [
        {"stage": "import", "config": {"paths": [str(data)], "preset": "columns"}},
    ]}
    if steps == "full":
        policy = {"rules": ["verified", "format_ok", "not_contaminated", {"survivors": ["exact"]},
                           {"per_problem": {"max": 1, "pick": "shortest"}}],
                  "negatives": {"max_per_problem": 2}}
        (root / "policy.yaml").write_text(yaml.safe_dump(policy))
        pipeline["steps"] += [
            {"stage": "verify_math", "config": {"timeout_s": 5}},
            {"stage": "verify_format"},
            {"stage": "dedup_exact"},
            {"stage": "difficulty"},
            {"stage": "decontaminate", "config": {"against": [f"{bench}:problem"]}},
            {"stage": "select", "config": {"policy": str(root / "policy.yaml")}},
        ]
    text = yaml.safe_dump(pipeline, sort_keys=False)
    (root / "pipeline.yaml").write_text(text)
    run = root / "run"
    run_pipeline(parse_pipeline(pipeline, path=root / "pipeline.yaml", text=text), run,
                 executor=InProcessExecutor(), progress=False)
    return run


# -- reading a card back -----------------------------------------------------------------------
def split_card(text: str) -> tuple[dict, str]:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert match, "card does not start with a YAML block"
    return yaml.safe_load(match.group(1)), match.group(2)


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    cells = re.split(r"(?<!\\)\|", inner)
    return [c.strip().replace("\\|", "|").replace("\\\\", "\\") for c in cells]


def card_tables(body: str) -> dict[str, list[list[dict[str, str]]]]:
    """Section title -> its tables, each a list of {column: cell}."""
    out: dict[str, list[list[dict[str, str]]]] = {}
    section = ""
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(-+:?\|)+$", lines[i + 1]):
            header = _cells(line)
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]), strict=True)))
                i += 1
            out.setdefault(section, []).append(rows)
            continue
        i += 1
    return out
