"""One rank of the DeepSpeed equivalence test, started by ``torchrun`` (see
test_deepspeed.py): two steps on a fixed batch with a checkpoint between them, then a
fresh engine resumed from that checkpoint retakes the second step. Rank 0 drives, the
other rank follows, as in ``hsd learner`` under torchrun.

Rank 0 writes ``result.pt``: per step the metrics, the credit and the whole weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from core.config import load_config
from learner.deepspeed_trainer import init_process_group
from learner.engines import make_trainer


def main(model_dir: str, batch_file: str, out_dir: str, *overrides: str) -> None:
    config = load_config(environ={}, overrides=['learner.engine="deepspeed"', *overrides])
    init_process_group()
    batch = torch.load(batch_file, weights_only=False)
    out = Path(out_dir)

    def fresh():
        torch.manual_seed(0)
        return make_trainer(AutoModelForCausalLM.from_pretrained(model_dir), config, batch["pad_id"])

    if torch.distributed.get_rank() > 0:
        fresh().follow()
        fresh().follow()
        return
    trainer = fresh()
    steps = []
    for step in range(2):
        if step == 1:
            trainer.save_state(out)
        result = trainer.train_step(batch["samples"])
        weights = {k: v.clone() for k, v in trainer.full_state_dict().items()}  # live tensors under ZeRO-2
        steps.append({"metrics": result.metrics, "credit": result.credit, "weights": weights})
    trainer.close()
    resumed = fresh()
    resumed.load_state(out)
    resumed.train_step(batch["samples"])
    torch.save({"steps": steps, "resumed": resumed.full_state_dict()}, out / "result.pt")
    resumed.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
