"""Wall time of `tda cite --method mirage` ÷ Inseq's `attribute-context` on the same HF model,
prompts and reference answers (issue 14's cost goal: ≤ 0.1). Standard library only; Inseq runs in
its own venv (see run.sh). Usage: compare.py TDA_BINARY VENV_PYTHON MODEL_DIR EXAMPLES_JSONL

Two tda figures: per answer inside one `tda cite --requests` process after its model load (each
report's `timings.total_s`: the same basis as Inseq's per-answer time, which is taken inside one
process after its import and model load), and a whole `tda cite` process per answer (load
included; in Inseq's favour). Inseq's import + load are reported separately.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TEMPLATE = "Question: {question}\n\n{context}\nAnswer:"


def main() -> None:
    tda, venv_python, model, examples_path = sys.argv[1:5]
    examples = [json.loads(l) for l in open(examples_path) if l.strip()]
    tda_s, tda_selected = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, ex in enumerate(examples):
            docs = os.path.join(tmp, f"docs{k}.jsonl")
            with open(docs, "w") as f:
                for d in ex["docs"]:
                    f.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
            cmd = [
                tda, "cite", "--model", model, "--question", ex["question"], "--docs", docs,
                "--answer", ex["answer"], "--method", "mirage", "--instruction", "",
                "--prompt-template", TEMPLATE, "--json",
            ]
            t = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            tda_s.append(time.perf_counter() - t)
            tda_selected.append(sum(1 for tok in json.loads(out)["tokens"] if tok["selected"]))
        # One process, all answers: the in-process per-answer time.
        t = time.perf_counter()
        out = subprocess.run(
            [tda, "cite", "--model", model, "--requests", examples_path, "--method", "mirage",
             "--instruction", "", "--prompt-template", TEMPLATE, "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
        batch_process_s = time.perf_counter() - t
        reports = [json.loads(l) for l in out.splitlines() if l.strip()]
        batch_s = [r["timings"]["total_s"] for r in reports]
        batch_selected = [sum(1 for tok in r["tokens"] if tok["selected"]) for r in reports]
        assert batch_selected == tda_selected, "--requests selects the tokens one run selects"
    here = os.path.dirname(os.path.abspath(__file__))
    t = time.perf_counter()
    res = subprocess.run(
        [venv_python, os.path.join(here, "inseq_cite.py"), model],
        input="".join(json.dumps(e) + "\n" for e in examples),
        check=True, capture_output=True, text=True,
    )
    inseq_process_s = time.perf_counter() - t
    ins = json.loads(res.stdout.strip().splitlines()[-1])
    tda_mean = statistics.mean(tda_s)
    ins_mean = statistics.mean(ins["per_answer_s"])
    print(json.dumps({
        "examples": len(examples),
        "tda_cite_in_process_per_answer_s": {
            "mean": statistics.mean(batch_s), "median": statistics.median(batch_s)},
        "tda_requests_process_s": batch_process_s,
        "tda_cite_process_per_answer_s": {"mean": tda_mean, "median": statistics.median(tda_s)},
        "inseq_per_answer_s": {"mean": ins_mean, "median": statistics.median(ins["per_answer_s"])},
        "inseq_load_s": ins["load_s"],
        "inseq_process_s": inseq_process_s,
        "ratio_in_process": statistics.mean(batch_s) / ins_mean,
        "ratio_process_per_answer": tda_mean / ins_mean,
        "ratio_whole_processes": batch_process_s / inseq_process_s,
        "context_sensitive_tokens": {"tda": tda_selected, "inseq": ins["context_sensitive_tokens"]},
    }, indent=2))


if __name__ == "__main__":
    main()
