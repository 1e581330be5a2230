"""Column mappings for the common shapes of published trace datasets, as polars expressions.

Each preset maps a raw frame to the standard columns `prompt`, `response` (raw text to split into
reasoning and answer) or `reasoning` + `answer` directly, plus whatever it can find of
`reference_answer`, `teacher`, `system`. A user mapping (`columns`) is applied on top, so
`--preset messages --map teacher=model` works.
"""

from __future__ import annotations

import polars as pl

PRESETS = ("columns", "messages", "sharegpt", "am_thinking", "openthoughts", "think")


def field_expr(path: str, frame: pl.DataFrame) -> pl.Expr:
    """``"info.think_content"`` -> the struct field of column ``info``; a plain name -> the column."""
    head, *rest = path.split(".")
    if head not in frame.columns:
        raise KeyError(head)
    expr = pl.col(head)
    for name in rest:
        expr = expr.struct.field(name)
    return expr


def _turns(column: str, role_field: str, text_field: str, roles: tuple[str, ...]) -> pl.Expr:
    return (
        pl.col(column)
        .list.eval(
            pl.element().filter(pl.element().struct.field(role_field).is_in(list(roles))).struct.field(text_field)
        )
        .list.last()
    )


def _struct_has(frame: pl.DataFrame, column: str, *path: str) -> bool:
    dtype = frame.schema.get(column)
    for name in path:
        if isinstance(dtype, pl.List):
            dtype = dtype.inner
        if not isinstance(dtype, pl.Struct) or name not in {f.name for f in dtype.fields}:
            return False
        dtype = next(f.dtype for f in dtype.fields if f.name == name)
    return True


def _last_assistant(column: str, field: str) -> pl.Expr:
    return (
        pl.col(column)
        .list.eval(pl.element().filter(pl.element().struct.field("role") == "assistant").struct.field(field))
        .list.last()
    )


def preset_exprs(preset: str, frame: pl.DataFrame) -> dict[str, pl.Expr]:
    if preset in ("columns", "think"):
        return {}
    if preset == "messages":
        out = {
            "prompt": _turns("messages", "role", "content", ("user",)),
            "response": _turns("messages", "role", "content", ("assistant",)),
            "system": _turns("messages", "role", "content", ("system",)),
        }
        if _struct_has(frame, "messages", "reasoning_content"):
            out["separate_reasoning"] = _last_assistant("messages", "reasoning_content")
        return out
    if preset in ("sharegpt", "openthoughts"):
        out = {
            "prompt": _turns("conversations", "from", "value", ("human", "user")),
            "response": _turns("conversations", "from", "value", ("gpt", "assistant")),
        }
        if "system" in frame.columns:
            out["system"] = pl.col("system")
        return out
    if preset == "am_thinking":
        out = {
            "prompt": _turns("messages", "role", "content", ("user",)),
            "response": _turns("messages", "role", "content", ("assistant",)),
        }
        if _struct_has(frame, "messages", "info", "think_content"):
            info = (
                pl.col("messages")
                .list.eval(pl.element().filter(pl.element().struct.field("role") == "assistant").struct.field("info"))
                .list.last()
            )
            out["reasoning"] = info.struct.field("think_content")
            out["answer"] = info.struct.field("answer_content")
        if _struct_has(frame, "messages", "info", "reference_answer"):
            out["reference_answer"] = (
                pl.col("messages")
                .list.eval(pl.element().filter(pl.element().struct.field("role") == "user").struct.field("info"))
                .list.first()
                .struct.field("reference_answer")
            )
        return out
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def detect_preset(frame: pl.DataFrame) -> str:
    if "messages" in frame.columns:
        return "am_thinking" if _struct_has(frame, "messages", "info") else "messages"
    if "conversations" in frame.columns:
        return "sharegpt"
    return "columns"
