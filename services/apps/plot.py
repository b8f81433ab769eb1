"""`hsd plot RUN_DIR`: a run's curves from its ``metrics.jsonl`` alone — no Prometheus, no
Grafana: reward, held-out accuracy (all and per path length), loss, gradient norm, the
policy's entropy, the teacher's KL and importance ratio, and throughput, each against the step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learner.step_log import FILE, read
from services.errors import StartupError

PANELS = (  # (title, [(metric, label)])
    ("reward (the batch's rollouts)", [("reward_mean", "mean reward")]),
    ("loss", [("loss", "loss")]),
    ("gradient norm (before clipping)", [("grad_norm", "‖g‖")]),
    ("policy entropy (nats per response token)", [("entropy", "H(π_θ)")]),
    ("teacher", [("teacher_kl", "KL(π_θ ‖ π_T), sampled"), ("distilled_fraction", "share distilled")]),
    ("off-policy", [("staleness", "staleness (versions)"), ("rho_mean", "mean ρ")]),
    ("throughput", [("tokens_per_second", "tokens/s")]),
)


def load(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's step records and evaluation records."""
    path = Path(run_dir) / FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} the dir of an hsd run?")
    records, _ = read(path)
    return [r for r in records if r.get("kind") == "step"], [r for r in records if r.get("kind") == "eval"]


def pyplot():
    """matplotlib's pyplot on the file backend; without matplotlib a one-line StartupError."""
    try:
        import matplotlib
    except ImportError:
        raise StartupError("the figures need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(run_dir: Path, out: Path) -> Path:
    plt = pyplot()
    steps, evals = load(run_dir)
    fig, axes = plt.subplots(3, 3, figsize=(15, 10))
    ax = axes[0][0]
    ax.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], marker="o", label="all")
    for k in sorted({k for e in evals for k in e["accuracy_by_length"]}, key=int):
        ax.plot([e["step"] for e in evals], [e["accuracy_by_length"].get(k) for e in evals], marker=".",
                alpha=0.7, label=f"k = {k}")
    ax.set_title("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot([e["step"] for e in evals], [e["reference_logprob"] for e in evals], marker="o")
    ax.set_title("held-out: log p(reference's marked tokens)")
    for ax, (title, series) in zip(axes.flat[2:], PANELS, strict=True):
        for metric, label in series:
            points = [(r["step"], r[metric]) for r in steps if r.get(metric) is not None]
            ax.plot([s for s, _ in points], [v for _, v in points], label=label)
        ax.set_title(title)
        if len(series) > 1:
            ax.legend(fontsize=8)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"hsd run {Path(run_dir).name}: {len(steps)} steps")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
