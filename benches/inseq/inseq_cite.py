"""Times Inseq's `attribute-context` (PECoRe/MIRAGE: CTI by KL, CCI by saliency) on the planted
RAG reader and the same prompts and reference answers that `tda cite --method mirage` attributes.

Run by `benches/inseq/run.sh`; reads the examples as JSON lines on stdin (from the `rag_jsonl`
example) and prints one JSON object: the per-answer wall times of Inseq, the model load time, and
the tokens Inseq marked context-sensitive per answer.

The prompt is the planted template `Question: {question}\n\n{context}\nAnswer:` with documents
rendered as `Document [i]: text\n`, the contextless prompt `Question: {question}\n\n\nAnswer:`
(the template with no documents, as `tda cite` renders it), and the answer after one space.
"""

import json
import sys
import time

import inseq
from inseq.commands.attribute_context.attribute_context import attribute_context_with_model
from inseq.commands.attribute_context.attribute_context_args import AttributeContextArgs


def main() -> None:
    model_dir = sys.argv[1]
    examples = [json.loads(line) for line in sys.stdin if line.strip()]
    t0 = time.perf_counter()
    model = inseq.load_model(model_dir, "saliency")
    load_s = time.perf_counter() - t0
    times, selected = [], []
    for ex in examples:
        context = "".join(f"Document [{i + 1}]: {d['text']}\n" for i, d in enumerate(ex["docs"]))
        args = AttributeContextArgs(
            model_name_or_path=model_dir,
            attribution_method="saliency",
            context_sensitivity_metric="kl_divergence",
            context_sensitivity_std_threshold=1.0,
            input_current_text=ex["question"],
            input_context_text=context,
            input_template="Question: {current}\n\n{context}\nAnswer:",
            contextless_input_current_text="Question: {current}\n\n\nAnswer:",
            output_current_text=ex["answer"],
            decoder_input_output_separator=" ",
            show_viz=False,
            show_intermediate_outputs=False,
            add_output_info=False,
        )
        t = time.perf_counter()
        out = attribute_context_with_model(args, model)
        times.append(time.perf_counter() - t)
        selected.append(len(out.cci_scores))
    json.dump(
        {
            "examples": len(examples),
            "load_s": load_s,
            "per_answer_s": times,
            "context_sensitive_tokens": selected,
            "inseq": inseq.__version__ if hasattr(inseq, "__version__") else "?",
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
