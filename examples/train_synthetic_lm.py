"""Train a small Llama-style language model on a synthetic task, in float and converted to INT8.

    python examples/train_synthetic_lm.py --steps 500 --seeds 0 1 2 --out benchmarks/results/synthetic_lm

The task: token sequences drawn from a fixed random Markov chain (each token has a few likely
successors), so the best achievable loss is the chain's entropy rate, known exactly. The model:
token embedding, `--depth` decoder blocks (RMSNorm, causal attention, SwiGLU MLP; every projection
an nn.Linear), RMSNorm, a linear head; next-token cross-entropy, AdamW. The float variant is bf16
autocast on a GPU (fp32 on the CPU); the INT8 variant is torch_int8.convert of the same model (its
Linear layers' forward, grad_input and grad_weight as INT8 products; the head kept float). Writes
<out>.json (the loss every step for both variants and every seed, the entropy floor) and <out>.png
(the loss curves).
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import torch_int8
from torch_int8.bench.llama_block import DecoderBlock, RMSNorm
from torch_int8.bench.plot import plot_float_int8_curves


class TinyLM(nn.Module):
    def __init__(self, vocab: int, hidden: int, heads: int, mlp: int, depth: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.Sequential(*(DecoderBlock(hidden, heads, mlp) for _ in range(depth)))
        self.norm, self.head = RMSNorm(hidden), nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens))))


def markov_chain(vocab: int, successors: int, generator: torch.Generator) -> torch.Tensor:
    """[vocab, vocab] transition probabilities: each row puts its mass on `successors` random tokens."""
    logits = torch.full((vocab, vocab), -math.inf)
    for row in range(vocab):
        cols = torch.randperm(vocab, generator=generator)[:successors]
        logits[row, cols] = torch.randn(successors, generator=generator)
    return logits.softmax(1)


def entropy_rate(transitions: torch.Tensor) -> float:
    """The chain's entropy per token (nats) under its stationary distribution: the loss floor."""
    p = transitions.double()
    stationary = torch.linalg.matrix_power(p, 256)[0]
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), 0.0)
    return float(-(stationary * plogp.sum(1)).sum())


def sample(transitions: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    tokens = torch.empty(batch, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(transitions.shape[0], (batch,), generator=generator)
    for t in range(1, length):
        tokens[:, t] = torch.multinomial(transitions[tokens[:, t - 1]], 1, generator=generator)[:, 0]
    return tokens


def run(int8: bool, seed: int, args, transitions: torch.Tensor, device: torch.device):
    """(the loss of every step, how many torch_int8.nn.Linear layers the model has)."""
    torch.manual_seed(seed)
    model = TinyLM(args.vocab, args.hidden, args.heads, args.mlp, args.depth).to(device)
    if int8:
        model = torch_int8.convert(model, filter_fn=lambda module, name: name != "head")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    data = torch.Generator().manual_seed(1000 + seed)  # the same sequences for both variants
    use_bf16 = device.type == "cuda"
    losses = []
    for step in range(args.steps):
        tokens = sample(transitions, args.batch, args.length + 1, data).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"{'int8 ' if int8 else 'float'} seed {seed} step {step + 1}: loss {losses[-1]:.4f}", flush=True)
    return losses, sum(isinstance(m, torch_int8.nn.Linear) for m in model.modules())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--successors", type=int, default=4, help="likely next tokens per token of the chain")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--mlp", type=int, default=1408)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, required=True, help="output prefix for .json and .png")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transitions = markov_chain(args.vocab, args.successors, torch.Generator().manual_seed(0))
    floor = entropy_rate(transitions)
    results = {"meta": {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                        "torch": torch.__version__, "torch_int8": torch_int8.__version__,
                        "float_baseline": "bf16 autocast" if device.type == "cuda" else "fp32",
                        "entropy_floor": floor, **{k: str(v) for k, v in vars(args).items()}}, "runs": {}}
    start = time.time()
    for variant in ("float", "int8"):
        for seed in args.seeds:
            results["runs"][f"{variant}/{seed}"], linears = run(variant == "int8", seed, args, transitions, device)
            results[f"{variant}_int8_linears"] = linears
    tail = max(1, args.steps // 10)  # the final loss: the mean of the last tenth of the steps
    final = {v: float(np.mean([np.mean(results["runs"][f"{v}/{s}"][-tail:]) for s in args.seeds]))
             for v in ("float", "int8")}
    results["final_loss_mean"], results["seconds"] = final, time.time() - start
    print(f"final loss (mean of the last {tail} steps, {len(args.seeds)} seeds): float {final['float']:.4f}  "
          f"int8 {final['int8']:.4f}  entropy floor {floor:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot_float_int8_curves(str(args.out.with_suffix(".png")), results["runs"], xlabel="step",
                           ylabel="training loss (nats / token)", floor=(floor, "entropy floor"),
                           title="synthetic language task: float vs torch_int8.convert")


if __name__ == "__main__":
    main()
