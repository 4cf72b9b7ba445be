"""Compares `tda trace --json` window scores with Kronfluence's pairwise scores (kron.py output)
or with another `tda trace --json` of the same queries and documents: Spearman per query (tda's
and Kronfluence's sign conventions are opposite: tda's score is positive when up-weighting the
document raises the measurement) and the largest difference relative to the largest |score| of
the second file. Usage: compare.py TRACE_JSON (KRON_JSON | TRACE_JSON). Standard library only."""

import json
import sys


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0] * len(v)
    for j, i in enumerate(order):
        r[i] = j
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den


def by_doc(q):
    """Document id → score of one query's results (one result per document: a document of one
    window, or `--granularity document`)."""
    return {r["doc_id"]: r["score"] for r in q["results"]}


def compare(trace, other):
    """Agreement of a `tda trace --json` object with a kron.py object or another trace object."""
    if "scores" in other:  # Kronfluence: [query][document i] for document "doc{i}", opposite sign
        refs = [{f"doc{d}": -x for d, x in enumerate(row)} for row in other["scores"]]
    else:
        refs = [by_doc(q) for q in other["queries"]]
    if len(refs) != len(trace["queries"]):
        raise ValueError(f"{len(refs)} queries against {len(trace['queries'])}")
    rhos, rel = [], 0.0
    for q, ref in zip(trace["queries"], refs):
        ours = by_doc(q)
        if ours.keys() != ref.keys():
            raise ValueError(f"query {q.get('id')}: the two rank different documents (use --top-k all)")
        keys = sorted(ref)
        t, k = [ours[d] for d in keys], [ref[d] for d in keys]
        rhos.append(spearman(t, k))
        scale = max(abs(x) for x in k) or 1.0
        rel = max(rel, max(abs(a - b) for a, b in zip(t, k)) / scale)
    return {"spearman_min": min(rhos), "spearman_mean": sum(rhos) / len(rhos), "spearman": rhos,
            "max_diff_rel": rel}


def main() -> None:
    try:
        print(json.dumps(compare(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))))
    except ValueError as e:
        sys.exit(f"{sys.argv[2]}: {e}")


if __name__ == "__main__":
    main()
