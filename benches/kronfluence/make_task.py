"""Writes the side-by-side task of issue 12: a Llama-shaped HF model (hidden 256, 4 layers, MLP
1024, vocabulary 2000, random init, untied), a corpus of 917 documents of 63 words (64 tokens
with BOS), 8 queries (prompt of 24 words, completion of 8), as files both tools read.

The tokenizer is word-level ("w0" … "w1999", whitespace-split), so that a document's ids are
the same in `tda` (tokenizers crate) and in Python: id i is the word "w{i}"; id 0 is BOS/EOS.
Usage: make_task.py OUT_DIR   (needs torch + transformers: the venv of run.sh)
"""

import json
import os
import random
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

V, DOCS, DOC_WORDS, QUERIES = 2000, 917, 63, 8


def main() -> None:
    out = sys.argv[1]
    os.makedirs(f"{out}/model", exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )
    LlamaForCausalLM(cfg).save_pretrained(f"{out}/model", safe_serialization=True)
    vocab = {f"w{i}": i for i in range(V)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(f"{out}/model/tokenizer.json")
    rng = random.Random(0)
    # Zipf-like word frequencies, so that the covariances are not those of uniform noise.
    weights = [1.0 / (i + 1) for i in range(1, V)]
    words = lambda n: rng.choices(range(1, V), weights=weights, k=n)
    with open(f"{out}/corpus.jsonl", "w") as f:
        for d in range(DOCS):
            f.write(json.dumps({"id": f"doc{d}", "text": " ".join(f"w{i}" for i in words(DOC_WORDS))}) + "\n")
    with open(f"{out}/queries.jsonl", "w") as f:
        for q in range(QUERIES):
            f.write(json.dumps({
                "id": f"q{q}",
                "prompt": " ".join(f"w{i}" for i in words(24)),
                "completion": " " + " ".join(f"w{i}" for i in words(8)),
            }) + "\n")


if __name__ == "__main__":
    main()
