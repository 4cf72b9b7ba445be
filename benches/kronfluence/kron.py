"""Kronfluence 1.0.1 on the task of make_task.py, with the settings `run.sh` gives `tda`: EK-FAC,
empirical Fisher, damping 1e-3 (absolute), full-rank queries, batch 16 (queries 8), every Linear
tracked (lm_head included), loss = summed next-token cross-entropy, measurement = summed
log-probability of the completion. Prints one JSON object: wall time per stage and the scores
[query][document]. Usage: kron.py TASK_DIR
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from transformers import LlamaForCausalLM


def ids(text: str) -> list[int]:
    return [int(w[1:]) for w in text.split()]


class LmTask(Task):
    def compute_train_loss(self, batch, model, sample=False):
        x = batch["input_ids"]
        logits = model(input_ids=x).logits[:, :-1].float()
        labels = x[:, 1:]
        if sample:
            with torch.no_grad():
                labels = torch.multinomial(logits.softmax(-1).reshape(-1, logits.shape[-1]), 1).reshape(labels.shape)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")

    def compute_measurement(self, batch, model):
        x, n = batch["input_ids"], batch["prompt_len"]
        logp = model(input_ids=x).logits[:, :-1].float().log_softmax(-1)
        tok = logp.gather(-1, x[:, 1:, None])[..., 0]
        keep = torch.arange(x.shape[1] - 1)[None, :] >= (n[:, None] - 1)
        return (tok * keep).sum()


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def main() -> None:
    task_dir = sys.argv[1]
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(f"{task_dir}/model", torch_dtype=torch.float32).eval()
    train = [{"input_ids": torch.tensor([0] + ids(json.loads(l)["text"]))} for l in open(f"{task_dir}/corpus.jsonl")]
    queries = []
    for l in open(f"{task_dir}/queries.jsonl"):
        q = json.loads(l)
        p = [0] + ids(q["prompt"])
        queries.append({"input_ids": torch.tensor(p + ids(q["completion"])), "prompt_len": torch.tensor(len(p))})
    task = LmTask()
    model = prepare_model(model, task)
    analyzer = Analyzer(analysis_name="tda_bench", model=model, task=task, cpu=True, disable_tqdm=True,
                        output_dir=f"{task_dir}/kronfluence")
    load_s = time.perf_counter() - t0
    fargs = FactorArguments(strategy="ekfac", use_empirical_fisher=True)
    t = time.perf_counter()
    analyzer.fit_all_factors(factors_name="ekfac", dataset=Rows(train), per_device_batch_size=16,
                             factor_args=fargs, overwrite_output_dir=True)
    fit_s = time.perf_counter() - t
    sargs = ScoreArguments(damping_factor=1e-3)
    t = time.perf_counter()
    analyzer.compute_pairwise_scores(scores_name="scores", factors_name="ekfac", query_dataset=Rows(queries),
                                     train_dataset=Rows(train), per_device_query_batch_size=8,
                                     per_device_train_batch_size=16, score_args=sargs, overwrite_output_dir=True)
    score_s = time.perf_counter() - t
    scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    json.dump({"load_s": load_s, "fit_s": fit_s, "score_s": score_s, "scores": scores.tolist()}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
