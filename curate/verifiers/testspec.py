"""The canonical `tests` JSON of a code problem, converters from the formats found in real data,
and the strict output comparator.

Canonical JSON (the `tests` column, text), one of three formats:

    {"format": "stdin_stdout", "language": "python",
     "cases": [{"input": "1 2\\n", "output": "3\\n"}, ...],
     "float_tol": null,                          # optional absolute/relative tolerance
     "comparison": "lines"}                      # optional: "tokens" when layout is free
    {"format": "functional", "language": "python",
     "test_code": "def check(candidate):\\n    assert candidate(1) == 2\\n",
     "entry_point": "Solution().addOne",         # what `candidate` is; null: inferred
     "prelude": "from typing import *\\n..."}   # run before the program (LeetCode imports)
    {"format": "assert", "language": "python",
     "asserts": ["assert add(1, 2) == 3", ...],
     "setup": "",                                # MBPP test_setup_code
     "prelude": ""}

Converters (`to_canonical_tests`) read: CodeContests / APPS / TACO `{"inputs": [...],
"outputs": [...]}` (APPS/TACO call-based ones with `fn_name` become functional tests); rllm
Codeforces `[{"input", "output"}]`; SandboxFusion `[{"input": {"stdin"}, "output": {"stdout"}}]`;
rllm LeetCode `{"functional": "def check(candidate): ... check(Solution().method)"}`; HumanEval
`{"test", "entry_point"}`; MBPP `{"test_list", "test_setup_code"}` or a bare list of `assert`
lines. Text input is JSON, or a Python literal (rllm stores some as `repr`): parsed with
`ast.literal_eval`, never `eval`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any

FORMATS = ("stdin_stdout", "functional", "assert")
HINTS = ("auto", "stdin_stdout", "codecontests", "apps", "taco", "codeforces", "sandboxfusion",
         "functional", "leetcode", "humaneval", "assert", "mbpp")

# What LeetCode-style reference solutions assume is already imported (rllm's harness adds the
# same): `List`, `Optional`, `defaultdict`, `heapq`, `inf`, ...
LEETCODE_PRELUDE = (
    "from typing import *\n"
    "from collections import *\n"
    "from functools import *\n"
    "from itertools import *\n"
    "from heapq import *\n"
    "from bisect import *\n"
    "from string import *\n"
    "from operator import *\n"
    "from math import *\n"
    "import collections, functools, itertools, heapq, bisect, math, string, re, operator, random, datetime\n"
    # The star imports shadow builtins (math.pow, operator.abs): give the builtins back, so a
    # model's `pow(a, b, mod)` works as it would anywhere else.
    "from builtins import pow, abs\n"
    "inf = float('inf')\n"
    "class ListNode:\n"
    "    def __init__(self, val=0, next=None):\n"
    "        self.val = val\n"
    "        self.next = next\n"
    "class TreeNode:\n"
    "    def __init__(self, val=0, left=None, right=None):\n"
    "        self.val = val\n"
    "        self.left = left\n"
    "        self.right = right\n"
    # The helpers rllm's LeetCode check functions call; values compare with the strict equality.
    "def list_node(values):\n"
    "    head = tail = ListNode()\n"
    "    for v in values:\n"
    "        tail.next = ListNode(v)\n"
    "        tail = tail.next\n"
    "    return head.next\n"
    "def is_same_list(p, q):\n"
    "    while p is not None and q is not None:\n"
    "        if not __curate_eq__(p.val, q.val):\n"
    "            return False\n"
    "        p, q = p.next, q.next\n"
    "    return p is None and q is None\n"
    "def tree_node(values):\n"
    "    if not values or values[0] is None:\n"
    "        return None\n"
    "    root = TreeNode(values[0])\n"
    "    queue, i = deque([root]), 1\n"
    "    while queue and i < len(values):\n"
    "        node = queue.popleft()\n"
    "        for side in ('left', 'right'):\n"
    "            if i < len(values) and values[i] is not None:\n"
    "                setattr(node, side, TreeNode(values[i]))\n"
    "                queue.append(getattr(node, side))\n"
    "            i += 1\n"
    "    return root\n"
    "def is_same_tree(p, q):\n"
    "    stack = [(p, q)]\n"
    "    while stack:\n"
    "        a, b = stack.pop()\n"
    "        if a is None or b is None:\n"
    "            if a is not b:\n"
    "                return False\n"
    "            continue\n"
    "        if not __curate_eq__(a.val, b.val):\n"
    "            return False\n"
    "        stack += [(a.left, b.left), (a.right, b.right)]\n"
    "    return True\n"
)


class TestSpecError(ValueError):
    """Tests that cannot be read or converted; the message says why."""

    __test__ = False  # not a pytest test class


# -- parsing raw values ---------------------------------------------------------------------
def _parse_text(raw: str) -> Any:
    text = raw.strip()
    if not text:
        raise TestSpecError("empty tests")
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    return text  # plain code: a check function or assert lines


def _strip_check_call(code: str) -> tuple[str, str | None]:
    """`...\\ncheck(Solution().twoSum)` -> (code without the call, "Solution().twoSum")."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise TestSpecError(f"test code does not parse: {exc}") from exc
    entry = None
    keep = []
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "check"
                and len(call.args) == 1 and not call.keywords):
            entry = ast.unparse(call.args[0])
            continue
        keep.append(node)
    if entry is None:
        return code, None
    lines = code.splitlines()
    # Drop the call's own lines, keep everything else byte for byte.
    drop = set()
    for node in tree.body:
        if node not in keep:
            drop.update(range(node.lineno - 1, (node.end_lineno or node.lineno)))
    return "\n".join(line for i, line in enumerate(lines) if i not in drop).rstrip() + "\n", entry


def _stdio(cases: list[tuple[Any, Any]], float_tol: float | None = None) -> dict:
    out = []
    for i, (inp, expected) in enumerate(cases):
        if isinstance(inp, list):
            inp = "\n".join(map(str, inp)) + "\n"
        if isinstance(expected, list):
            expected = "\n".join(map(str, expected)) + "\n"
        if not isinstance(inp, str) or not isinstance(expected, str):
            raise TestSpecError(f"case {i}: input and output must be text, got {type(inp).__name__}/"
                                f"{type(expected).__name__}")
        out.append({"input": inp, "output": expected})
    if not out:
        raise TestSpecError("no test cases")
    return {"format": "stdin_stdout", "language": "python", "cases": out, "float_tol": float_tol}


def _functional(test_code: str, entry_point: str | None, prelude: str = "") -> dict:
    code, called = _strip_check_call(test_code)
    if "def check" not in code:
        raise TestSpecError("functional tests need a `def check(candidate)`")
    return {"format": "functional", "language": "python", "test_code": code,
            "entry_point": entry_point or called, "prelude": prelude}


def _asserts(lines: list[str], setup: str = "", prelude: str = "") -> dict:
    asserts = [line.strip() for line in lines if isinstance(line, str) and line.strip()]
    if not asserts:
        raise TestSpecError("no assert lines")
    for line in asserts:
        try:
            ast.parse(line)
        except SyntaxError as exc:
            raise TestSpecError(f"assert line does not parse: {line[:80]!r}: {exc}") from exc
    return {"format": "assert", "language": "python", "asserts": asserts, "setup": setup or "", "prelude": prelude}


def _call_based(fn_name: str, inputs: list, outputs: list) -> dict:
    """APPS/TACO call-based: each input is an argument list; outputs are wrapped in a list."""
    lines = ["def check(candidate):"]
    for args, expected in zip(inputs, outputs, strict=True):
        want = expected[0] if isinstance(expected, list) and len(expected) == 1 else expected
        lines.append(f"    assert candidate(*{args!r}) == {want!r}")
    return _functional("\n".join(lines) + "\n", fn_name, LEETCODE_PRELUDE)


def _from_value(value: Any, hint: str) -> dict:
    if isinstance(value, dict):
        if value.get("format") in FORMATS:
            return validate(value)
        if "inputs" in value and "outputs" in value:
            if value.get("fn_name"):
                return _call_based(value["fn_name"], value["inputs"], value["outputs"])
            inputs, outputs = value["inputs"], value["outputs"]
            if len(inputs) != len(outputs):
                raise TestSpecError(f"{len(inputs)} inputs but {len(outputs)} outputs")
            return _stdio(list(zip(inputs, outputs, strict=True)))
        if "functional" in value:
            prelude = LEETCODE_PRELUDE if hint in ("auto", "leetcode", "functional") else ""
            return _functional(value["functional"], value.get("entry_point"), prelude)
        if "test" in value and isinstance(value["test"], str):
            return _functional(value["test"], value.get("entry_point"), "")
        if "test_list" in value:
            return _asserts(value["test_list"], value.get("test_setup_code") or "")
        raise TestSpecError(f"unknown tests object with keys {sorted(value)[:8]}")
    if isinstance(value, list):
        if not value:
            raise TestSpecError("no test cases")
        if all(isinstance(v, str) for v in value):
            return _asserts(value)
        if all(isinstance(v, dict) for v in value):
            first = value[0]
            if isinstance(first.get("input"), dict) or isinstance(first.get("output"), dict):
                # SandboxFusion: {"input": {"stdin": ...}, "output": {"stdout": ...}}
                return _stdio([((v.get("input") or {}).get("stdin", ""), (v.get("output") or {}).get("stdout"))
                               for v in value])
            if "input" in first and "output" in first:
                return _stdio([(v.get("input"), v.get("output")) for v in value])
        raise TestSpecError("unknown list of tests (expected input/output pairs or assert lines)")
    if isinstance(value, str):
        if hint in ("assert", "mbpp") or value.lstrip().startswith("assert"):
            return _asserts(value.splitlines())
        if "def check" in value:
            prelude = LEETCODE_PRELUDE if hint in ("leetcode",) else ""
            return _functional(value, None, prelude)
    raise TestSpecError(f"cannot read tests of type {type(value).__name__} (hint {hint!r})")


def to_canonical_tests(raw: str | dict | list, hint: str | None = None) -> str:
    """Any supported tests value -> canonical JSON text. ``hint`` names the source format when
    a value alone is ambiguous (see HINTS); None/"auto" detects it. Raises TestSpecError."""
    hint = (hint or "auto").lower()
    if hint not in HINTS:
        raise TestSpecError(f"unknown tests format hint {hint!r}; choose one of {', '.join(HINTS)}")
    value = _parse_text(raw) if isinstance(raw, str) else raw
    # Some dumps nest the JSON once more (a JSON string holding JSON).
    if isinstance(value, str) and value.strip()[:1] in "[{":
        value = _parse_text(value)
    return json.dumps(_from_value(value, hint), ensure_ascii=False)


def validate(spec: dict) -> dict:
    fmt = spec.get("format")
    if fmt not in FORMATS:
        raise TestSpecError(f"tests format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "stdin_stdout":
        cases = spec.get("cases")
        if not isinstance(cases, list) or not cases:
            raise TestSpecError("stdin_stdout tests need a non-empty `cases` list")
        for i, case in enumerate(cases):
            if not isinstance(case, dict) or not isinstance(case.get("input"), str) or not isinstance(
                    case.get("output"), str):
                raise TestSpecError(f"case {i} needs text `input` and `output`")
    elif fmt == "functional":
        if not isinstance(spec.get("test_code"), str) or "def check" not in spec["test_code"]:
            raise TestSpecError("functional tests need `test_code` with a `def check(candidate)`")
    elif not isinstance(spec.get("asserts"), list) or not spec["asserts"]:
        raise TestSpecError("assert tests need a non-empty `asserts` list")
    spec.setdefault("language", "python")
    return spec


def load_tests(text: str | None) -> dict | None:
    """Parse the `tests` column; None when absent. Accepts raw formats too (converted)."""
    if text is None or not str(text).strip():
        return None
    value = _parse_text(text)
    if isinstance(value, dict) and value.get("format") in FORMATS:
        return validate(value)
    return json.loads(to_canonical_tests(value))


# -- call-style cases -------------------------------------------------------------------------
class _StrictEq(ast.NodeTransformer):
    """`a == b` -> `__curate_eq__(a, b)` (and != likewise), so an object with a rigged __eq__
    cannot satisfy an assert (see the runner's `curate_eq`)."""

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) != 1 or not isinstance(node.ops[0], ast.Eq | ast.NotEq):
            return node
        call = ast.Call(func=ast.Name("__curate_eq__", ast.Load()), args=[node.left, node.comparators[0]],
                        keywords=[])
        out = call if isinstance(node.ops[0], ast.Eq) else ast.UnaryOp(ast.Not(), call)
        return ast.copy_location(out, node)


def _harden(code: str) -> str:
    tree = _StrictEq().visit(ast.parse(code))
    return ast.unparse(ast.fix_missing_locations(tree))


@dataclass(frozen=True)
class CallCase:
    setup: str  # run once per case before `test` (test module: imports, helpers, `def check`)
    test: str  # the code of this case (one assert, or `check(candidate)`)
    entry: str | None
    shown: str  # what `first_failure.input` shows


def _infer_entry(program: str) -> str | None:
    """`Solution().<first public method>` when the program has a Solution class, else its last
    top-level function."""
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return None
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Solution":
            methods = [n.name for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
            if methods:
                return f"Solution().{methods[0]}"
    return functions[-1] if functions else None


def call_cases(spec: dict, program: str) -> list[CallCase]:
    """Split a functional/assert spec into cases: one per top-level assert of `check` when its
    body is only asserts (passed/total is then meaningful), else one case running check()."""
    if spec["format"] == "assert":
        setup = _harden(spec.get("setup") or "") if spec.get("setup") else ""
        return [CallCase(setup, _harden(line), None, line) for line in spec["asserts"]]
    code = spec["test_code"]
    entry = spec.get("entry_point") or _infer_entry(program)
    tree = ast.parse(code)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise TestSpecError("functional tests define no check()")
    body = [n for n in check.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    setup = _harden(code)
    if body and all(isinstance(n, ast.Assert) for n in body) and len(check.args.args) == 1:
        arg = check.args.args[0].arg
        cases = []
        for node in body:
            text = ast.get_source_segment(code, node) or ast.unparse(node)
            test = f"{arg} = candidate\n" + _harden(ast.unparse(node)) if arg != "candidate" else _harden(
                ast.unparse(node))
            cases.append(CallCase(setup, test, entry, text))
        return cases
    return [CallCase(setup, "check(candidate)", entry, "check(candidate)")]


def program_prelude(spec: dict) -> str | None:
    return spec.get("prelude") or None


# -- the comparator ----------------------------------------------------------------------
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _tokens_equal(got: str, expected: str, float_tol: float | None) -> bool:
    if got == expected:
        return True
    if float_tol is None:
        return False
    a, b = got.split(), expected.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        if not (_FLOAT.match(x) and _FLOAT.match(y)):
            return False
        fx, fy = float(x), float(y)
        if not (math.isfinite(fx) and math.isfinite(fy)):
            return False
        if abs(fx - fy) > float_tol * max(1.0, abs(fy)):
            return False
    return True


def outputs_match(got: str, expected: str, *, float_tol: float | None = None, mode: str = "lines") -> bool:
    """Strict: the same number of lines, every expected line matched in order. Trailing
    whitespace on a line and trailing blank lines are ignored; with ``float_tol``, numeric tokens
    may differ by that much (absolute below 1, relative above). ``mode="tokens"``: the same
    whitespace-separated token sequence (line breaks free), still complete and in order."""
    if mode == "tokens":
        return _tokens_equal(" ".join(got.split()), " ".join(expected.split()), float_tol) if float_tol \
            else got.split() == expected.split()
    got_lines, want_lines = _lines(got), _lines(expected)
    if len(got_lines) != len(want_lines):
        return False
    return all(_tokens_equal(g, w, float_tol) for g, w in zip(got_lines, want_lines, strict=True))
