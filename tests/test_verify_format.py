import pyarrow as pa

from curate.testing import run_stage_in_memory
from curate.verifiers.format import FormatVerifyStage


def test_each_check_is_a_column():
    loop = "\n".join(["Let me check again."] * 30)
    table = pa.table({
        "reasoning": ["short thought", "half a thought", loop, None, "思考一下这个问题 and then english"],
        "answer": ["The answer is \\boxed{4}.", None, "\\boxed{1}", "\\boxed{2}" * 10, "\\boxed{5}"],
        "think_closed": [True, False, True, None, True],
        "finish_reason": ["stop", "length", "stop", "stop", "stop"],
    })
    out = run_stage_in_memory(FormatVerifyStage(), table)
    t = out.table
    col = lambda name: t.column(f"format__{name}").to_pylist()  # noqa: E731
    assert col("has_answer") == [True, False, True, True, True]
    assert col("truncated") == [False, True, False, False, False]
    assert col("boxed_count") == [1, 0, 1, 10, 1]
    assert col("max_line_repeats") == [1, 1, 30, 1, 1]
    assert col("think_closed") == [True, False, True, None, True]
    assert col("cjk_share")[4] > 0.05 and col("cjk_share")[0] == 0.0
    assert col("tokens")[0] == 11  # short, thought, The, answer, is, \, boxed, {, 4, }, .
    assert col("ok") == [True, False, False, False, False]
    assert out.counts["flag:truncated"] == 1 and out.counts["flag:boxed_repeated"] == 1
    assert out.counts["flag:line_repeated"] == 1 and out.counts["flag:language_mixing"] == 1
    assert t.num_rows == 5  # a verifier never drops a row
