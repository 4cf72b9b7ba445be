"""The numbers of `benches/gpu/run.sh`: reads its step outputs (WORK/NAME.json) and writes
OUT/summary.json and a table to stdout. Steps that failed or did not run are reported as missing.
Usage: summary.py WORK OUT"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kronfluence"))
from compare import compare  # noqa: E402


def load(work, name):
    try:
        with open(f"{work}/{name}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def agree(a, b):
    if a is None or b is None:
        return None
    try:
        c = compare(a, b)
    except (ValueError, KeyError) as e:
        return {"error": str(e)}
    return {"spearman_min": c["spearman_min"], "spearman_mean": c["spearman_mean"], "max_diff_rel": c["max_diff_rel"]}


def fit_stages(f):
    keys = ("total_s", "covariance_pass_s", "eigen_s", "lambda_pass_s", "model_s", "accumulate_s")
    return None if f is None else {k: f.get(k) for k in keys}


def trace_stages(t):
    if t is None:
        return None
    r = t["report"]
    keys = ("total_s", "queries_s", "model_s", "contraction_s", "candidates", "candidate_tokens", "candidate_tokens_per_s")
    return {k: r.get(k) for k in keys}


def total(fit, trace):
    if fit is None or trace is None:
        return None
    return fit["total_s"] + trace["report"]["total_s"]


def main() -> None:
    work, out = sys.argv[1], sys.argv[2]
    j = lambda n: load(work, n)
    s = {"gpu": open(f"{out}/gpu.txt").read().strip() if os.path.exists(f"{out}/gpu.txt") else None}
    # A: the side-by-side task.
    kron = j("a_kron")
    tda_s = total(j("a_fit_device"), j("a_trace_device"))
    s["a"] = {
        "fit_host": fit_stages(j("a_fit_host")), "fit_device": fit_stages(j("a_fit_device")),
        "trace_host": trace_stages(j("a_trace_host")), "trace_device": trace_stages(j("a_trace_device")),
        "device_vs_host_contraction": agree(j("a_trace_device"), j("a_trace_host")),
        "device_vs_host_factors": agree(j("a_trace_fdev"), j("a_trace_host")),
        "precision_bf16_vs_f32": agree(j("a_trace_pbf16"), j("a_trace_device")),
        "dtype_bf16_vs_f32": agree(j("a_trace_dbf16"), j("a_trace_device")),
        "tda_vs_kronfluence": agree(j("a_trace_device"), kron),
        "kronfluence": None if kron is None else {"fit_s": kron["fit_s"], "score_s": kron["score_s"]},
        "tda_total_s": tda_s,
        "ratio_tda_over_kronfluence": tda_s / (kron["fit_s"] + kron["score_s"]) if tda_s and kron else None,
    }
    # B: GPT-2-small.
    train, fit, trace, kron = j("b_train"), j("b_fit"), j("b_trace"), j("b_kron")
    tda_s = total(fit, trace)
    kron_s = None if kron is None else kron["fit_s"] + kron["score_s"]
    s["b"] = {
        "train_tokens_per_s": None if train is None else train["tokens_per_s"],
        "fit": fit_stages(fit), "trace": trace_stages(trace),
        "p1": trace["report"]["candidate_tokens_per_s"] / train["tokens_per_s"] if trace and train else None,
        "kronfluence": None if kron is None else {"fit_s": kron["fit_s"], "score_s": kron["score_s"]},
        "tda_total_s": tda_s,
        "speedup_over_kronfluence": kron_s / tda_s if kron_s and tda_s else None,
        "tda_vs_kronfluence": agree(trace, kron),
    }
    with open(f"{out}/summary.json", "w") as f:
        json.dump(s, f, indent=2)
    print(json.dumps(s, indent=2))


if __name__ == "__main__":
    main()
