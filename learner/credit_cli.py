"""``hsd credit``: the per-token credit δ_t of one response under a model.

    hsd credit --model DIR --prompt P --response R (--peer Y | --answer A | --reward 0/1)
               [--method hsd|opsd|sdzero] [--json] [--png FILE]

The response is tokenized once; the student sees x ++ y, the teacher c ++ y (for sdzero
the reviser view, read on the second copy). ``--json`` prints the ids of both sequences,
whose common suffix is y, so anyone can recompute δ_t with two plain forward passes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import torch

from core.config import AlgorithmConfig
from core.method_registry import METHOD_REGISTRY
from core.prompts import render_prompt_ids
from core.records import RolloutGroup, Sample
from core.views import student_input
from learner.logprobs import score_responses
from methods import make_method
from methods.credit import divergence_position, token_credit
from methods.peers import PeerSource, PeerTag

INPUT_FOR_METHOD = {m: e.teacher_reads for m, e in METHOD_REGISTRY.items() if e.teacher_reads}
METHOD_FOR_INPUT = {flag: m for m, flag in INPUT_FOR_METHOD.items()}


def _sample(ids: list[int], text: str, success: bool) -> Sample:
    return Sample(np.asarray(ids, np.int32), np.zeros(len(ids), np.float32), float(success), success, "stop", text)


def compute(model: Any, tokenizer: Any, prompt: str, response: str, method: str, *,
            peer: str | None = None, answer: str | None = None, reward: float | None = None) -> dict[str, Any]:
    """δ_t of ``response`` under ``method``'s teacher view: the view the learner trains with,
    built from a group of the response (sample 0) and the peer (sample 1, if given)."""
    if method not in INPUT_FOR_METHOD:
        raise ValueError(f"unknown method {method!r}")
    needed = INPUT_FOR_METHOD[method]
    if {"peer": peer, "answer": answer, "reward": reward}[needed] is None:
        raise ValueError(f"--method {method} needs --{needed}")
    y = tokenizer.encode(response, add_special_tokens=False)
    if not y:
        raise ValueError("the response is empty")
    prompt_ids = render_prompt_ids(tokenizer, prompt)
    samples = [_sample(y, response, reward is not None and reward > 0.5)]
    if peer is not None:
        samples.append(_sample(tokenizer.encode(peer, add_special_tokens=False), peer, True))
    group = RolloutGroup(run="credit", group_id="cli", prompt_id="cli", task="cli", actor="cli", created=0.0,
                         policy_version=0, prompt=prompt, prompt_ids=np.asarray(prompt_ids, np.int32),
                         answer=answer, samples=tuple(samples))
    tag = PeerTag(PeerSource.GROUP, index=1) if peer is not None else PeerTag(PeerSource.NONE)
    teacher = make_method(AlgorithmConfig(method=method)).teacher_view(tokenizer, group, 0, tag)
    student = student_input(prompt_ids, y)
    divergence = divergence_position(y, samples[1].ids.tolist()) if peer is not None else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        s_lp, _, _ = score_responses(model, [student], pad)
        t_lp, _, _ = score_responses(model, [teacher], pad)
    delta = token_credit(t_lp[0], s_lp[0], torch.ones(len(y), dtype=torch.bool)).tolist()
    return {"tokens": tokenizer.convert_ids_to_tokens(y), "delta": [round(d, 6) for d in delta],
            "divergence": divergence, "student_ids": student.ids, "teacher_ids": teacher.ids}


def colour(tokens: list[str], delta: list[float], divergence: int | None, ansi: bool = True) -> str:
    """Tokens on a red (δ < 0: the teacher disagrees) / green (δ > 0) background, brighter
    with |δ|; the divergence position is underlined. Without ``ansi`` (stdout is not a
    terminal): ``token[δ]`` plain text, the divergence marked ``>>``."""
    if not ansi:
        return " ".join(f"{'>>' if t == divergence else ''}{tok.replace(chr(10), '⏎')}[{d:+.2f}]"
                        for t, (tok, d) in enumerate(zip(tokens, delta, strict=True)))
    scale = max((abs(d) for d in delta), default=1.0) or 1.0
    out = []
    for t, (tok, d) in enumerate(zip(tokens, delta, strict=True)):
        level = min(int(abs(d) / scale * 5), 4)
        bg = (52, 88, 124, 160, 196)[level] if d < 0 else (22, 28, 34, 40, 46)[level]
        underline = "\033[4m" if t == divergence else ""
        out.append(f"\033[48;5;{bg}m{underline}{tok.replace(chr(10), '⏎')}\033[0m")
    return "".join(out)


def plot(result: dict[str, Any], path: str, title: str = "") -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("--png needs matplotlib (pip install matplotlib)") from err
    delta = result["delta"]
    fig, ax = plt.subplots(figsize=(max(7, len(delta) * 0.38), 3.8))
    ax.bar(range(len(delta)), delta, color=["tab:red" if d < 0 else "tab:green" for d in delta])
    ax.set_xticks(range(len(delta)), [t.replace("\n", "\\n") for t in result["tokens"]], fontsize=7, rotation=60)
    ax.axhline(0, color="black", lw=0.8)
    if result["divergence"] is not None:  # between the last shared token and the first differing one
        ax.axvline(result["divergence"] - 0.5, color="black", linestyle="--", label="divergence from the peer")
        ax.legend(fontsize=8)
    ax.set_ylabel(r"$\delta_t = \log \pi_T(y_t) - \log \pi_\theta(y_t)$")
    ax.set_xlabel("response token")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learner.tiny_model import resolve_model

    given = [k for k in METHOD_FOR_INPUT if getattr(args, k) is not None]
    method = args.method or (METHOD_FOR_INPUT[given[0]] if given else None)
    if method is None:
        print("hsd credit: give --peer, --answer or --reward (or --method)", file=sys.stderr)
        return 2
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    try:
        result = compute(model, tokenizer, args.prompt, args.response, method,
                         peer=args.peer, answer=args.answer, reward=args.reward)
    except ValueError as err:
        print(f"hsd credit: {err}", file=sys.stderr)
        return 2
    if args.png:
        context = {"peer": args.peer, "answer": args.answer, "reward": args.reward}
        shown = next((f"{k} {v!r}" for k, v in context.items() if v is not None), "")
        plot(result, args.png, f"{method}: prompt {args.prompt!r}" + (f"; {shown}" if shown else ""))
    if args.json:
        print(json.dumps(result))
    else:
        print(colour(result["tokens"], result["delta"], result["divergence"], ansi=sys.stdout.isatty()))
        d = result["delta"]
        peak = max(range(len(d)), key=lambda t: abs(d[t]))
        print(f"method {method}: {len(d)} tokens, mean |δ| {sum(map(abs, d)) / len(d):.3f}, "
              f"peak δ {d[peak]:+.3f} at token {peak}"
              + (f", divergence at {result['divergence']}" if result["divergence"] is not None else ""))
    return 0
