"""Select rules that choose rather than filter: per-problem `pick: diverse` (real MiniLM), and the
budgeted subset's spread across domains, quality order and embedding clusters."""

import polars as pl
import pyarrow as pa

from tests.test_select_policy import ids, select


def test_per_problem_diverse_keeps_the_shortest_then_the_farthest_trace():
    texts = {
        "a": "We factor the quadratic and find the roots are two and three.",
        "b": "We factor the quadratic and find that the roots are two and three, done.",
        "c": "Draw the triangle, drop an altitude from the apex and compare the similar triangles.",
        "d": "We factor this quadratic expression and find that its roots are two and three.",
        "e": "Count the outcomes of two dice.",
    }
    table = pa.table({
        "trace_id": list(texts), "problem_id": ["p1", "p1", "p1", "p1", "p2"],
        "completion_tokens": pa.array([10, 20, 30, 40, 50], pa.int64()), "reasoning": list(texts.values()),
    })
    _, kept, counts, _ = select({"rules": [{"per_problem": {"max": 2, "pick": "diverse"}}]}, table)
    # p1: a is the shortest; of b, c, d the geometry trace is farthest from it (b and d restate a);
    # p2 has one trace, under the cap, so it is kept without being embedded
    assert ids(kept) == ["a", "c", "e"]
    assert counts["drop:per_problem"] == 2
    _, shortest, _, _ = select({"rules": [{"per_problem": {"max": 2, "pick": "shortest"}}]}, table)
    assert ids(shortest) == ["a", "b", "e"]


def _problems(rows):
    cols = list(zip(*rows, strict=True))
    return pa.table({"trace_id": [f"t-{p}" for p in cols[0]], "problem_id": list(cols[0]), "domain": list(cols[1]),
                     "difficulty__bucket": list(cols[2]), "judge__score": pa.array(cols[3], pa.float64()),
                     "prompt": list(cols[4])})


def test_budget_round_robins_domains_preferring_difficulty_then_quality():
    table = _problems([
        ("p1", "math", "hard", 0.2, "x"), ("p2", "math", "hard", 0.9, "x"), ("p3", "math", "medium", 1.0, "x"),
        ("p4", "code", "medium", 0.5, "x"), ("p5", "code", "hard", 0.1, "x"), ("p6", "code", "easy", 0.99, "x"),
    ])
    policy = {"budget": {"problems": 3, "prefer": ["hard", "medium"], "spread": ["domain"], "quality": "judge__score"}}
    _, kept, _, _ = select({"rules": [policy]}, table)
    # first round: the best of each domain (hard first, then quality): p2 (math), p5 (code);
    # second round starts with math's next hard problem p1, ahead of code's medium p4
    assert sorted(ids(kept)) == ["t-p1", "t-p2", "t-p5"]
    _, four, _, _ = select({"rules": [{"budget": {**policy["budget"], "problems": 4}}]}, table)
    assert sorted(ids(four)) == ["t-p1", "t-p2", "t-p4", "t-p5"]


def test_budget_spreads_across_embedding_clusters_of_prompts():
    geometry = ["Find the area of a triangle with sides 3, 4 and 5.",
                "A triangle has sides 5, 12 and 13; what is its area?",
                "Compute the area of the right triangle whose legs are 6 and 8."]
    dice = ["Two fair dice are rolled. What is the probability that the sum is 7?",
            "What is the probability of rolling a total of 8 with two six-sided dice?",
            "If you roll two dice, how likely is a sum of 11?"]
    rows = [(f"g{i}", "math", "hard", 1.0 - i / 10, t) for i, t in enumerate(geometry)]
    rows += [(f"d{i}", "math", "hard", 0.5 - i / 10, t) for i, t in enumerate(dice)]
    table = _problems(rows)
    budget = {"problems": 2, "prefer": ["hard"], "spread": [], "quality": "judge__score"}
    _, plain, _, _ = select({"rules": [{"budget": budget}]}, table)
    assert sorted(ids(plain)) == ["t-g0", "t-g1"]  # quality alone takes the two best geometry problems
    _, spread, _, _ = select({"rules": [{"budget": {**budget, "clusters": 2}}]}, table)
    assert sorted(ids(spread)) == ["t-d0", "t-g0"]  # the best of each topic cluster
    assert pl.from_arrow(spread).height == 2
    # the same problems in another row order choose the same subset (k-means sees them sorted)
    _, reordered, _, _ = select({"rules": [{"budget": {**budget, "clusters": 2}}]}, table.take(list(range(5, -1, -1))))
    assert sorted(ids(reordered)) == ["t-d0", "t-g0"]
