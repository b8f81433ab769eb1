"""The arms of `hsd compare`: each a method and a few ``[algorithm]`` overrides of the
existing code paths, and the contrasts between them that separate hindsight credit from
what rides along with it.

HSD with a frozen teacher differs from GRPO in three things at once: a teacher whose
context holds a successful peer (hindsight), the samples it distils (the failed ones), and
δ's pull towards the initial weights θ0 (δ_t = log π_θ0(y_t | c) − log π_θ(y_t | x) holds
log π_θ0 − log π_θ, a sampled reverse-KL regulariser). Each control arm removes or
isolates one of them; a contrast is read as ``minuend − subtrahend``.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.method_registry import METHOD_REGISTRY

BASELINE = "grpo"
FROZEN = 'algorithm.teacher="frozen"'
SYNC_EVERY = 4  # steps between copies of sdzero-sync's teacher: three copies in a 12-step run


@dataclass(frozen=True)
class Arm:
    name: str
    method: str
    overrides: tuple[str, ...]  # [algorithm] settings on top of the method's defaults
    what: str  # what the arm is, for the table's legend


NAMED_ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("grpo", "grpo", (), "the baseline: outcome advantage only"),
    Arm("grpo-kl0.01", "grpo", ("algorithm.kl_coef=0.01",), "GRPO + sampled KL to θ0, β = 0.01"),
    Arm("grpo-kl0.1", "grpo", ("algorithm.kl_coef=0.1",), "GRPO + sampled KL to θ0, β = 0.1"),
    Arm("hsd", "hsd", (FROZEN,), "HSD: frozen teacher reading an in-group successful peer, failed samples"),
    Arm("hsd-current", "hsd", ('algorithm.teacher="current"',), "HSD with the current policy as teacher (no pull to θ0)"),
    Arm("hsd-placebo", "hsd", (FROZEN, 'algorithm.peer_source="placebo"'),
        "HSD with another prompt's success as the peer"),
    Arm("hsd-reference", "hsd", (FROZEN, 'algorithm.peer_source="reference"'),
        "HSD with the reference solution in place of the peer"),
    Arm("hsd-topk", "hsd", (FROZEN, 'algorithm.loss="topk"'), "HSD with the top-k KL loss"),
    Arm("opsd", "opsd", (FROZEN,), "OPSD: frozen teacher reading the reference answer, every sample"),
    Arm("opsd-failed", "opsd", (FROZEN, 'algorithm.distill="failed"'), "OPSD on failed samples only"),
    Arm("sdzero", "sdzero", (), "SD-Zero: the SRT model as its own frozen reviser, top-64 KL"),
    Arm("sdzero-sync", "sdzero", ('algorithm.teacher="sync"', f"algorithm.teacher_sync_every={SYNC_EVERY}"),
        f"SD-Zero with the reviser synchronised to the student every {SYNC_EVERY} steps (iterative self-evolution)"),
    Arm("rft", "rft", (), "RFT: fine-tuning on the model's own successful samples (SD-Zero's baseline)"),
)}
# every registered method is an arm at its own settings, under its name, unless named above
# (a method added to the registry is in `hsd compare --arms` with no edit here)
ARMS: dict[str, Arm] = {**NAMED_ARMS, **{m: Arm(m, m, (), e.summary) for m, e in METHOD_REGISTRY.items()
                                         if e.is_arm and m not in NAMED_ARMS}}

# (minuend, subtrahend, what the difference isolates); besides every arm − grpo
CONTRASTS: tuple[tuple[str, str, str], ...] = (
    ("hsd", "opsd", "peer vs answer in context, failed vs every sample (the earlier comparison)"),
    ("hsd", "opsd-failed", "the context alone: both distil the same failed samples"),
    ("hsd", "hsd-placebo", "the peer's content: a fluent success of another prompt in its place"),
    ("hsd", "hsd-current", "the frozen teacher's pull towards θ0"),
    ("hsd", "grpo-kl0.01", "hindsight against a KL pull to θ0 alone (β = 0.01)"),
    ("hsd", "grpo-kl0.1", "hindsight against a KL pull to θ0 alone (β = 0.1)"),
    ("hsd-reference", "hsd", "the ground-truth solution in place of an on-policy peer"),
    ("hsd-topk", "hsd", "the top-k KL in place of credit on the sampled token"),
    ("sdzero", "rft", "the reviser's token-level KL against fine-tuning on one's own successes"),
    ("sdzero-sync", "sdzero", "iterative self-evolution: a reviser that follows the student against a frozen one"),
)
# the arms that would recover HSD's lead if it were regularisation, not hindsight
CONTROLS = ("grpo-kl0.01", "grpo-kl0.1", "hsd-placebo")


def contrast_name(minuend: str, subtrahend: str) -> str:
    return f"{minuend} − {subtrahend}"


def contrasts(arms: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """(minuend, subtrahend) of every difference the analysis takes among ``arms``: each
    arm against the baseline, then the named contrasts whose two arms both ran."""
    pairs = [(a, BASELINE) for a in arms if a != BASELINE]
    pairs += [(a, b) for a, b, _ in CONTRASTS if a in arms and b in arms and (a, b) not in pairs]
    return pairs


def unknown_arms(names: list[str] | tuple[str, ...]) -> list[str]:
    return [n for n in names if n not in ARMS]
