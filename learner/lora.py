"""LoRA for the learner (``learner.lora_rank`` > 0): peft's LoRA layers injected in place
into the Hugging Face model, so the trainer, its teacher policies and the logit route
work on the same module as in full fine-tuning, and only the adapters train.

What leaves the learner is merged: the published weights and every checkpoint's
``model/`` hold W + (α/r)·B·A under the model's own parameter names, so the actors (HF or
vLLM) load them as they load any update, and a checkpoint is a plain model. The adapters
themselves go into the checkpoint's trainer state; a resume loads the base weights from
``model.path`` and the adapters from there (loading the merged weights as the base would
count the adapters twice).

A frozen teacher and the KL penalty's θ0 copy the model when the trainer starts, where
B = 0: they are the base model, as in full fine-tuning.
"""

from __future__ import annotations

from typing import Any

import torch

from core.config import LearnerConfig

ADAPTER = "default"  # peft's name for the one adapter


def add_adapters(model: torch.nn.Module, lc: LearnerConfig) -> torch.nn.Module:
    """``model`` with LoRA layers of rank ``lora_rank`` on ``lora_target_modules`` (in
    place; its other parameters frozen)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets: Any = lc.lora_target_modules if lc.lora_target_modules == "all-linear" else list(
        lc.lora_target_modules.split(","))
    config = LoraConfig(r=lc.lora_rank, lora_alpha=lc.lora_alpha, lora_dropout=lc.lora_dropout,
                        target_modules=targets)
    try:
        return inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as err:  # no such module in this model: one line naming the field, exit 2
        from services.errors import StartupError

        raise StartupError(f"learner.lora_target_modules: {lc.lora_target_modules!r}: {err}") from None


def _lora_layers(model: torch.nn.Module) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the model the adapters make, under the names of the model without
    them: ``….base_layer.weight`` + the layer's ΔW becomes ``….weight``; the adapters'
    own tensors are left out."""
    layers = _lora_layers(model)
    out = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        module, wrapped, leaf = name.rpartition(".base_layer.")
        if not wrapped:
            out[name] = tensor
        elif leaf == "weight":
            delta = layers[module].get_delta_weight(ADAPTER)
            out[f"{module}.weight"] = (tensor + delta.to(tensor.dtype)).contiguous()
        else:  # the wrapped layer's bias
            out[f"{module}.{leaf}"] = tensor
    return out


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items() if ".lora_" in name}


def load_adapters(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The adapters of a checkpoint back into ``model`` (ValueError where they do not fit
    its LoRA layers: another rank or other target modules)."""
    own = adapter_state_dict(model)
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise ValueError("the checkpoint's LoRA adapters do not fit this run's learner.lora_rank / "
                         "lora_target_modules")
    model.load_state_dict(state, strict=False)
