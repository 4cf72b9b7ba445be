"""Kronfluence 1.0.1 on a task of make_task.py, with the settings the calling script gives `tda`.
Defaults are `benches/kronfluence/run.sh`'s: EK-FAC, empirical Fisher, damping 1e-3 (absolute),
full-rank queries, batch 16 (queries 8), every Linear tracked (lm_head included), CPU, 2 threads.
Rank-r queries use the exact truncated SVD (`use_full_svd`), as `tda` does.
Loss = summed next-token cross-entropy; measurement = summed log-probability of the completion.
GPT-2's `Conv1D` layers (which Kronfluence does not support) become the equivalent `nn.Linear`.
Prints one JSON object: wall time per stage and the scores [query][document].
Usage: kron.py TASK_DIR [--device cpu|cuda] [--threads N] [--fisher empirical|true]
       [--damping X|heuristic] [--query-rank full|R] [--modules all|blocks] [--fit-corpus FILE]
       [--batch B] [--query-batch Q]
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D


def ids(text: str) -> list[int]:
    return [int(w[1:]) for w in text.split()]


def conv1d_to_linear(model: torch.nn.Module) -> None:
    """Replaces every HF `Conv1D` (y = x W + b, W [in, out]) by the same `nn.Linear`."""
    for name, m in list(model.named_modules()):
        if isinstance(m, Conv1D):
            lin = torch.nn.Linear(m.weight.shape[0], m.weight.shape[1], bias=m.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(m.weight.t())
                if m.bias is not None:
                    lin.bias.copy_(m.bias)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, lin)


class LmTask(Task):
    def __init__(self, tracked):
        super().__init__()
        self.tracked = tracked

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
        keep = torch.arange(x.shape[1] - 1, device=x.device)[None, :] >= (n[:, None] - 1)
        return (tok * keep).sum()

    def get_influence_tracked_modules(self):
        return self.tracked


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def docs(path):
    return [{"input_ids": torch.tensor([0] + ids(json.loads(l)["text"]))} for l in open(path)]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("task_dir")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fisher", choices=["empirical", "true"], default="empirical")
    p.add_argument("--damping", default="1e-3")
    p.add_argument("--query-rank", default="full")
    p.add_argument("--modules", choices=["all", "blocks"], default="all")
    p.add_argument("--fit-corpus", default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--query-batch", type=int, default=8)
    a = p.parse_args()
    task_dir = a.task_dir
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(f"{task_dir}/model", dtype=torch.float32).eval()
    conv1d_to_linear(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    tracked = None if a.modules == "all" else [n for n in linears if n != "lm_head"]
    train = docs(f"{task_dir}/corpus.jsonl")
    fit = docs(a.fit_corpus) if a.fit_corpus else train
    queries = []
    for l in open(f"{task_dir}/queries.jsonl"):
        q = json.loads(l)
        pr = [0] + ids(q["prompt"])
        queries.append({"input_ids": torch.tensor(pr + ids(q["completion"])), "prompt_len": torch.tensor(len(pr))})
    task = LmTask(tracked)
    model = prepare_model(model, task)
    analyzer = Analyzer(analysis_name="tda_bench", model=model, task=task, cpu=a.device == "cpu",
                        disable_tqdm=True, output_dir=f"{task_dir}/kronfluence")
    load_s = time.perf_counter() - t0
    fargs = FactorArguments(strategy="ekfac", use_empirical_fisher=a.fisher == "empirical")
    t = time.perf_counter()
    analyzer.fit_all_factors(factors_name="ekfac", dataset=Rows(fit), per_device_batch_size=a.batch,
                             factor_args=fargs, overwrite_output_dir=True)
    sync(a.device)
    fit_s = time.perf_counter() - t
    sargs = ScoreArguments(
        damping_factor=None if a.damping == "heuristic" else float(a.damping),
        query_gradient_low_rank=None if a.query_rank == "full" else int(a.query_rank),
        use_full_svd=True,  # the exact rank-r truncation, as tda computes (the default is a randomized SVD)
    )
    t = time.perf_counter()
    analyzer.compute_pairwise_scores(scores_name="scores", factors_name="ekfac", query_dataset=Rows(queries),
                                     train_dataset=Rows(train), per_device_query_batch_size=a.query_batch,
                                     per_device_train_batch_size=a.batch, score_args=sargs, overwrite_output_dir=True)
    sync(a.device)
    score_s = time.perf_counter() - t
    scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    json.dump({"load_s": load_s, "fit_s": fit_s, "score_s": score_s, "device": a.device,
               "fit_documents": len(fit), "documents": len(train), "queries": len(queries),
               "tracked_modules": len(tracked) if tracked else len(linears),
               "scores": scores.float().cpu().tolist()}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
