"""Wall time of `tda cite --method mirage` ÷ Inseq's `attribute-context` on the same HF model,
prompts and reference answers (issue 14's cost goal: ≤ 0.1). Standard library only; Inseq runs in
its own venv (see run.sh). Usage: compare.py TDA_BINARY VENV_PYTHON MODEL_DIR EXAMPLES_JSONL

tda is timed as a whole process per answer (model load included); Inseq per answer inside one
process after the model is loaded (its import and load are reported separately) — the comparison
is in Inseq's favour.
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
        "tda_cite_per_answer_s": {"mean": tda_mean, "median": statistics.median(tda_s)},
        "inseq_per_answer_s": {"mean": ins_mean, "median": statistics.median(ins["per_answer_s"])},
        "inseq_load_s": ins["load_s"],
        "inseq_process_s": inseq_process_s,
        "ratio_tda_over_inseq": tda_mean / ins_mean,
        "ratio_including_inseq_load": sum(tda_s) / inseq_process_s,
        "context_sensitive_tokens": {"tda": tda_selected, "inseq": ins["context_sensitive_tokens"]},
    }, indent=2))


if __name__ == "__main__":
    main()
