"""Compares `tda trace --json` window scores with Kronfluence's pairwise scores (kron.py output):
Spearman per query (the two sign conventions are opposite: tda's score is positive when
up-weighting the document raises the measurement) and the largest difference relative to the
largest |score|. Usage: compare.py TRACE_JSON KRON_JSON. Standard library only."""

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


def main() -> None:
    trace = json.load(open(sys.argv[1]))
    kron = json.load(open(sys.argv[2]))["scores"]
    rhos, rel = [], 0.0
    for qi, q in enumerate(trace["queries"]):
        ours = {r["doc_id"]: r["score"] for r in q["results"]}
        k = kron[qi]
        t = [-ours[f"doc{d}"] for d in range(len(k))]
        rhos.append(spearman(t, k))
        scale = max(abs(x) for x in k)
        rel = max(rel, max(abs(a - b) for a, b in zip(t, k)) / scale)
    print(json.dumps({"spearman_min": min(rhos), "spearman": rhos, "max_diff_rel": rel}))


if __name__ == "__main__":
    main()
