"""Writes a side-by-side task for `tda` and Kronfluence: an HF model (random init), a corpus of
documents of random words, and queries, as files both tools read with the same token ids.

Defaults are issue 12's CPU task: a Llama-shaped model (hidden 256, 4 layers, MLP 1024,
vocabulary 2000, untied), 917 documents of 63 words (64 tokens with BOS), 8 queries (prompt of
24 words, completion of 8). `--arch gpt2` writes a GPT-2 shape instead (heads of 64, learned
positions up to 1,024, tied embeddings; MLP 4 × hidden); `benches/gpu/run.sh` uses it for the
GPT-2-small job (hidden 768, 12 layers, vocabulary 50,257, documents of 511 words = one window of
512 tokens).

The tokenizer is word-level ("w0" … "w{V-1}", whitespace-split), so that a document's ids are
the same in `tda` (tokenizers crate) and in Python: id i is the word "w{i}"; id 0 is BOS/EOS.
`--fit-docs N` also writes `fit.jsonl`, the first N documents (the fit's corpus).
Usage: make_task.py OUT_DIR [--arch llama|gpt2] [--hidden H] [--layers L] [--vocab V]
       [--docs D] [--doc-words W] [--queries Q] [--fit-docs N]   (needs torch + transformers)
"""

import argparse
import json
import os
import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def model(a):
    if a.arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=a.vocab, n_embd=a.hidden, n_layer=a.layers, n_head=max(a.hidden // 64, 1),
            n_positions=1024, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
        )
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--docs", type=int, default=917)
    p.add_argument("--doc-words", type=int, default=63)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--fit-docs", type=int, default=None)
    a = p.parse_args()
    out, V = a.out, a.vocab
    os.makedirs(f"{out}/model", exist_ok=True)
    torch.manual_seed(0)
    model(a).save_pretrained(f"{out}/model", safe_serialization=True)
    vocab = {f"w{i}": i for i in range(V)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(f"{out}/model/tokenizer.json")
    rng = random.Random(0)
    # Zipf-like word frequencies, so that the covariances are not those of uniform noise.
    weights = [1.0 / (i + 1) for i in range(1, V)]
    words = lambda n: rng.choices(range(1, V), weights=weights, k=n)
    docs = [json.dumps({"id": f"doc{d}", "text": " ".join(f"w{i}" for i in words(a.doc_words))})
            for d in range(a.docs)]
    with open(f"{out}/corpus.jsonl", "w") as f:
        f.writelines(d + "\n" for d in docs)
    if a.fit_docs is not None:
        with open(f"{out}/fit.jsonl", "w") as f:
            f.writelines(d + "\n" for d in docs[: a.fit_docs])
    with open(f"{out}/queries.jsonl", "w") as f:
        for q in range(a.queries):
            f.write(json.dumps({
                "id": f"q{q}",
                "prompt": " ".join(f"w{i}" for i in words(24)),
                "completion": " " + " ".join(f"w{i}" for i in words(8)),
            }) + "\n")


if __name__ == "__main__":
    main()
