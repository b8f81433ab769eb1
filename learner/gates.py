"""Gates a warm-started model must pass before a comparison on a chain task (the table
chain, or the any-order chain with ``task = "chain-any"``) means anything (``hsd gates``).
Each is measured on held-out problems, before any RL:

- G0 (any-order chain only) several paths: the share of the student's successful samples
  at k ≥ 2 whose text is not the reference solution is ≥ 0.5, so that a successful peer in
  a run usually shows another path than the reference (the table chain has one path a
  problem, and so has every k = 1 problem: the control, where path and answer coincide).

- G1 the peer-conditioned teacher (HSD) can use a peer: with a successful peer in
  context it reproduces the peer (≥ 95% of samples); at the positions where the student's
  own failed samples leave that peer, its p(peer token) exceeds the student's by ≥ 0.5
  (mean); after a deviated prefix it re-synchronises, i.e. goes on from the deviated value
  (≥ 90%), so its credit does not punish the steps after a mistake.
- G2 the answer-conditioned teacher (OPSD) is silent at intermediate mistakes: on k ≥ 4
  chains whose mistake is not at the last step, its mean |δ| at the mistake is ≤ 0.3 ×
  HSD's.
- G3 HSD's credit is where the mistake is: the share of Σ|δ| within ±2 tokens of the
  mistake is ≥ 0.6 (mean over failed samples).
- G4 (SD-Zero) the reviser knows more than a fresh attempt: its accuracy after a failed
  attempt (told "this response is wrong") exceeds the student's accuracy on the same
  problems (the problem's other samples) by ≥ 0.10 and by ≥ half of what a reviser that
  knows the warm start's beliefs gains (computed exactly, :mod:`learner.curricula.bayes_reviser`).
  Failed attempts are mostly on hard problems (long chains), so the student's accuracy over
  all problems would be the wrong bar. The reviser is the model itself (SD-Zero's teacher
  before any SRT), or ``--reviser DIR`` (a model after SRT).
- G4-loc (self-localisation): ≥ 60% of the reviser-vs-generator KL over a failed attempt,
  Σ_t KL(π(·| x, y, P_wrong, y_<t) ‖ π(·| x, y_<t)), lies within ±2 tokens of its mistake
  (mean over failed samples; the Bayes reviser's share beside it).

A failed sample's *mistake* is the first token where it leaves every valid solution (on
the table chain the reference's divergence from it; on the any-order chain a sample in
another order than the reference leaves the reference at its first function name, which
is no mistake, so the divergence from the reference would misplace it). On the any-order
chain G3 is also measured on the failed samples that follow the peer's order up to their
mistake ("G3 on the peer's path"): the others take another valid path first, and a
peer-conditioned teacher's credit there lands on the departure from the peer, not only on
the mistake.

A comparison whose gates fail is inconclusive.
"""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from core.engines.base import SamplingSettings
from core.engines.hf import HFEngine
from core.prompts import render_prompt_ids
from core.tasks import make_task
from core.tasks.chain import WORLDS, ChainTask, parse_prompt, render, steps
from core.views import ScoringInput, student_input
from learner.curricula import curriculum
from learner.curricula.bayes_reviser import RevisionBayes, revision_bayes
from learner.logprobs import score_responses
from methods.credit import divergence_mass, divergence_position, token_credit
from methods.hsd import hsd_input
from methods.losses import kl_divergence
from methods.opsd import opsd_input
from methods.sdzero import reviser_context, sdzero_input

ATTEMPT_TOKENS = 64  # a k = 6 chain is 42 tokens
G4_GAIN = 0.10  # the least reviser gain over a fresh attempt that G4 accepts
SRT_TOKENS = 160  # a k = 6 attempt, the revision phrase and a revision: what an SRT model may write


@dataclass
class Gate:
    name: str
    value: float | None
    threshold: float
    higher_is_better: bool
    what: str

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        shown = "-" if self.value is None else f"{self.value:.3f}"
        op = "≥" if self.higher_is_better else "≤"
        return f"{verdict} {self.name:<20} {shown:>7}  (gate {op} {self.threshold:g})  {self.what}"


class _Scorer:
    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def logprobs(self, views: list[ScoringInput], batch: int = 64) -> list[torch.Tensor]:
        out = []
        for i in range(0, len(views), batch):
            chunk = views[i:i + batch]
            lp, _, _ = score_responses(self.model, chunk, self.pad)
            out += [lp[r, : v.length].float() for r, v in enumerate(chunk)]
        return out

    @torch.no_grad()
    def logits(self, views: list[ScoringInput], batch: int = 64) -> list[torch.Tensor]:
        """Each view's response logits [its length, V]."""
        out = []
        for i in range(0, len(views), batch):
            chunk = views[i:i + batch]
            _, logits, _ = score_responses(self.model, chunk, self.pad)
            out += [logits[r, : v.length].float() for r, v in enumerate(chunk)]
        return out

    @torch.no_grad()
    def probabilities_at(self, views: list[ScoringInput], positions: list[int], tokens: list[int]) -> list[float]:
        """p(tokens[i] | the view's context and response before positions[i])."""
        out = []
        for view, pos, tok in zip(views, positions, tokens, strict=True):
            ids = torch.tensor([view.ids[: view.start + pos]])
            logits = self.model(input_ids=ids).logits[0, -1].float()
            out.append(float(torch.softmax(logits, -1)[tok]))
        return out


@dataclass
class Failures:
    """The student's failed samples on held-out problems, each against the reference chain
    as its successful peer, and both teachers' credit on them."""

    problems: list[Any]
    responses: list[list[int]]
    peers: list[list[int]]
    divergence: list[int]  # first token where the sample leaves its peer
    mistake: list[int]  # first token where the sample leaves every valid solution
    hsd_delta: list[torch.Tensor]  # δ_t of the peer-conditioned teacher (HSD's view)
    opsd_delta: list[torch.Tensor]  # δ_t of the answer-conditioned teacher (OPSD's view)
    student_success: list[bool]  # every sample's outcome, failed or not
    resample_success: list[float]  # per failed sample: its problem's other samples' success rate
    other_paths: list[bool]  # per successful sample: its text is not the reference solution


def failures(engine: HFEngine, held_out: list[Any], samples: int, max_tokens: int = ATTEMPT_TOKENS,
             task: ChainTask | None = None) -> Failures:
    tok = engine.tokenizer
    scorer = _Scorer(engine.model, tok)
    task = task or ChainTask()
    groups = engine.generate([render_prompt_ids(tok, p.prompt) for p in held_out],
                             SamplingSettings(n=samples, max_tokens=max_tokens))
    success, failed, mistakes, resample, other_paths = [], [], [], [], []
    for p, group in zip(held_out, groups, strict=True):
        peer = tok.encode(p.reference, add_special_tokens=False) + [tok.eos_token_id]
        solutions = None
        outcomes = [task.score(c.text, p).success for c in group]
        success += outcomes
        if p.fields["k"] >= 2:
            other_paths += [c.text.strip() != p.reference for c, ok in zip(group, outcomes, strict=True) if ok]
        for c, ok in zip(group, outcomes, strict=True):
            if not ok and c.ids and c.ids != peer:
                solutions = solutions or [tok.encode(s, add_special_tokens=False) + [tok.eos_token_id]
                                          for s in task.solutions(p)]
                failed.append((p, c.ids, peer))
                mistakes.append(mistake_position(c.ids, solutions))
                resample.append(resample_rate(outcomes))
    student_views = [student_input(render_prompt_ids(tok, p.prompt), y) for p, y, _ in failed]
    s_lp = scorer.logprobs(student_views)
    deltas = []
    for views in ([hsd_input(tok, p.prompt, y, p.reference) for p, y, _ in failed],
                  [opsd_input(tok, p.prompt, y, p.answer) for p, y, _ in failed]):
        deltas.append([token_credit(t, s, torch.ones_like(s, dtype=torch.bool))
                       for t, s in zip(scorer.logprobs(views), s_lp, strict=True)])
    return Failures([p for p, _, _ in failed], [y for _, y, _ in failed], [peer for _, _, peer in failed],
                    [divergence_position(y, peer) for _, y, peer in failed], mistakes, deltas[0], deltas[1], success,
                    resample, other_paths)


def mistake_position(response: Sequence[int], solutions: Sequence[Sequence[int]]) -> int:
    """The first token where a response leaves every valid solution: its longest common
    prefix with any of them."""
    return max(divergence_position(response, s) for s in solutions)


def resample_rate(outcomes: list[bool]) -> float:
    """A failed sample's problem's success rate over its other samples: what a fresh
    attempt at that problem scores (the failed sample itself counts 0 successes)."""
    return sum(outcomes) / (len(outcomes) - 1) if len(outcomes) > 1 else 0.0


def credit_by_offset(f: Failures, k: int, offsets: range) -> dict[str, Any]:
    """Mean |δ_t| of each teacher at each token offset from the mistake, over the failed
    samples of path length ``k`` (None where no sample reaches that offset)."""
    rows = [i for i, p in enumerate(f.problems) if p.fields["k"] == k]
    out: dict[str, Any] = {"k": k, "offsets": list(offsets), "samples": len(rows)}
    for name, deltas in (("hsd", f.hsd_delta), ("opsd", f.opsd_delta)):
        at = [[abs(float(deltas[i][f.mistake[i] + o])) for i in rows
               if 0 <= f.mistake[i] + o < len(deltas[i])] for o in offsets]
        out[name] = [statistics.fmean(v) if v else None for v in at]
    return out


def measure(model_path: str, *, problems: int = 128, samples: int = 8, seed: int = 0,
            reviser_path: str | None = None, task_name: str = "chain") -> list[Gate]:
    engine = HFEngine.from_pretrained(model_path)
    tok = engine.tokenizer
    scorer = _Scorer(engine.model, tok)
    rng = random.Random(seed)
    task = make_task(task_name)
    if not isinstance(task, ChainTask):
        raise ValueError(f"the gates measure a chain task ({', '.join(WORLDS)}), not {task_name!r}")
    held_out = list(itertools.islice(task.problems("test", seed=seed), problems))
    torch.manual_seed(seed)
    # a model after SRT may answer with attempt, revision phrase and revision in one response
    f = failures(engine, held_out, samples, SRT_TOKENS if reviser_path else ATTEMPT_TOKENS, task)

    # G1a: reproduce a successful peer
    copies = engine.generate([hsd_input(tok, p.prompt, [], p.reference).ids for p in held_out],
                             SamplingSettings(n=2, max_tokens=64))
    reproduced = [c.text.strip() == p.reference for p, group in zip(held_out, copies, strict=True) for c in group]

    # G1b at the failed samples' divergences from the peer; G2, G3 at their mistakes
    d, m = f.divergence, f.mistake
    hsd_views = [hsd_input(tok, p.prompt, y, p.reference) for p, y in zip(f.problems, f.responses, strict=True)]
    student_views = [student_input(render_prompt_ids(tok, p.prompt), y)
                     for p, y in zip(f.problems, f.responses, strict=True)]
    peer_tokens = [peer[i] for peer, i in zip(f.peers, d, strict=True)]
    p_teacher = scorer.probabilities_at(hsd_views, d, peer_tokens)
    p_student = scorer.probabilities_at(student_views, d, peer_tokens)
    masses = [share for delta, i in zip(f.hsd_delta, m, strict=True)
              if (share := divergence_mass(delta, i, 2)) is not None]
    intermediate = [n for n, (p, i) in enumerate(zip(f.problems, m, strict=True))
                    if p.fields["k"] >= 4 and not _at_last_step(tok, p, i)]
    hsd_at = [abs(float(f.hsd_delta[n][m[n]])) for n in intermediate]
    opsd_at = [abs(float(f.opsd_delta[n][m[n]])) for n in intermediate]

    # G1c: re-synchronise after a deviated prefix
    resync_prompts, expected = [], []
    for p in held_out:
        start, functions = parse_prompt(p.prompt_id)
        if len(functions) < 2:
            continue
        chain = steps(start, functions, task.world.table)
        j = rng.randrange(len(chain) - 1)
        fn, x, y = chain[j]
        wrong = rng.choice([v for v in range(10) if v != y])
        prefix = render(chain[:j] + [(fn, x, wrong)]).split(". ####")[0] + ", "
        resync_prompts.append(hsd_input(tok, p.prompt, tok.encode(prefix, add_special_tokens=False),
                                        p.reference).ids)
        expected.append(f"{functions[j + 1]}{wrong}=")
    continued = engine.generate(resync_prompts, SamplingSettings(n=1, max_tokens=4))
    resync = [g[0].text.startswith(e) for g, e in zip(continued, expected, strict=True)]

    gates = [
        Gate("G0 several paths", _mean(f.other_paths), 0.5, True,
             f"the student's {len(f.other_paths)} successful samples at k ≥ 2 that are not the reference"),
    ] if task.world.any_order else []
    gates += [
        Gate("G1 peer reproduced", _mean(reproduced), 0.95, True,
             "samples of the HSD view that copy a successful peer exactly"),
        Gate("G1 p(peer) gain", _mean([t - s for t, s in zip(p_teacher, p_student, strict=True)]), 0.5, True,
             f"teacher − student p(peer token) at {len(d)} failed samples' divergences"),
        Gate("G1 re-synchronises", _mean(resync), 0.9, True,
             "HSD view after a deviated prefix goes on from the deviated value"),
        Gate("G2 OPSD/HSD |δ|", (statistics.fmean(opsd_at) / statistics.fmean(hsd_at)) if hsd_at else None,
             0.3, False, f"mean |δ| at {len(intermediate)} intermediate mistakes (k ≥ 4)"),
        Gate("G3 HSD mass ±2", _mean(masses), 0.6, True, "share of Σ|δ| within ±2 tokens of the mistake"),
    ]
    if task.world.any_order:
        # a sample that leaves the peer's order before its mistake takes another valid path
        # there: how much of HSD's credit that departure draws, against the mistake's
        on_path = [n for n in range(len(m)) if d[n] == m[n]]
        departed = [n for n in range(len(m)) if d[n] < m[n]]
        at_departure = [share for n in departed if (share := divergence_mass(f.hsd_delta[n], d[n], 2)) is not None]
        gates.append(Gate("G3 on the peer's path", _mean([share for n in on_path if (
            share := divergence_mass(f.hsd_delta[n], m[n], 2)) is not None]), 0.6, True,
            f"G3 on the {len(on_path)} failed samples that follow the peer's order to their mistake; the "
            f"other {len(departed)} put {_mean(at_departure) or 0:.3f} of Σ|δ| within ±2 tokens of their "
            "departure from the peer's order (another valid path, no mistake)"))
    reviser = HFEngine.from_pretrained(reviser_path) if reviser_path else engine
    beliefs = curriculum(task_name).beliefs
    return gates + revision_gates(scorer, reviser, f, task, revision_bayes(beliefs, held_out))


def revision_gates(scorer: _Scorer, reviser: HFEngine, f: Failures, task: ChainTask,
                   bayes: RevisionBayes | None) -> list[Gate]:
    """G4 and G4-loc on the student's failed samples, each beside what a reviser that
    knows the warm start's beliefs reaches on the same problems (``bayes``)."""
    tok = scorer.tokenizer
    contexts = [reviser_context(tok, p.prompt, y, False) for p, y in zip(f.problems, f.responses, strict=True)]
    revised = reviser.generate(contexts, SamplingSettings(n=1, max_tokens=SRT_TOKENS))
    accuracy = _mean([task.score(g[0].text, p).success for p, g in zip(f.problems, revised, strict=True)])
    resampled = _mean(f.resample_success)
    threshold = max(G4_GAIN, 0.5 * bayes.gain) if bayes else G4_GAIN
    ceiling = (f"; a Bayes reviser: {bayes.posterior:.3f} against a fresh attempt's {bayes.fresh:.3f}, gain "
               f"{bayes.gain:+.3f} (the likeliest other answer: {bayes.map:.3f}); gate ≥ {G4_GAIN:g} and ≥ half "
               "the Bayes gain" if bayes else "")
    what = (f"reviser accuracy after {len(f.problems)} failed attempts ({accuracy:.3f}) − a fresh attempt's on "
            f"the same problems ({resampled:.3f}; on all: {_mean(f.student_success):.3f}){ceiling}"
            if accuracy is not None else "the student failed no sample")

    # self-localisation: where the reviser's view of a failed attempt departs from the generator's
    generator = scorer.logits([student_input(render_prompt_ids(tok, p.prompt), y)
                               for p, y in zip(f.problems, f.responses, strict=True)])
    own = _Scorer(reviser.model, tok).logits([sdzero_input(tok, p.prompt, y, False)
                                               for p, y in zip(f.problems, f.responses, strict=True)])
    shares = [share for r, g, m in zip(own, generator, f.mistake, strict=True)
              if (share := divergence_mass(kl_divergence(r, g), m, 2)) is not None]
    return [
        Gate("G4 reviser > fresh", None if accuracy is None else accuracy - resampled, threshold, True, what),
        Gate("G4-loc at the mistake", _mean(shares), 0.6, True,
             f"share of KL(reviser ‖ generator) over a failed attempt within ±2 tokens of its mistake, "
             f"{len(shares)} attempts" + (f"; a Bayes reviser: {bayes.localised:.3f}" if bayes else "")),
    ]


def _at_last_step(tokenizer: Any, problem: Any, position: int) -> bool:
    """Whether token ``position`` of the reference lies in its last step or the answer."""
    text = problem.reference
    last_step = text.rfind(", ")
    prefix_len = len(tokenizer.encode(text[: last_step + 2], add_special_tokens=False))
    return position >= prefix_len


def _mean(values: list) -> float | None:
    return statistics.fmean(float(v) for v in values) if values else None


def report(gates: list[Gate]) -> dict[str, Any]:
    return {"gates": [asdict(g) | {"passed": g.passed} for g in gates],
            "conclusive": all(g.passed is not False for g in gates)}

