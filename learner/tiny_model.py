"""The project's own tiny model: a Qwen3-architecture causal LM with a character tokenizer.

Nothing is downloaded: the tokenizer is built with ``tokenizers`` (every printable ASCII
character is a token, plus Qwen's chat special tokens and a chat template), the model
from a ``Qwen3Config`` with random weights. Both are saved as an ordinary Hugging Face
folder and loaded back with ``from_pretrained`` like any other model.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from services.errors import StartupError

log = logging.getLogger(__name__)

TINY = "tiny"  # the shipped model, warm-started on the table chain (learner/models/tiny-chain)
TINY_ARITH = "tiny-arith"  # warm-started on the arithmetic task on first use, then cached
TINY_VERSION = "v5"  # bump when the architecture, tokenizer or arithmetic warm start changes
MODELS = Path(__file__).with_name("models")
# the shipped warm starts, by name: the table chain's (`hsd warm-start --task chain`, seed 1
# and, for the comparison's second warm-start seed, 2) and the any-order chain's
# (`--task chain-any`: several valid paths; seeds 1 and 2 likewise) and the exclusion chain's
# (`--task chain-exclusion`, seed 1: SD-Zero's test bed; a second seed is not trained yet)
SHIPPED = {TINY: MODELS / "tiny-chain", "tiny-seed2": MODELS / "tiny-chain-seed2",
           "tiny-chain-any": MODELS / "tiny-chain-any", "tiny-chain-any-seed2": MODELS / "tiny-chain-any-seed2",
           "tiny-chain-exclusion": MODELS / "tiny-chain-exclusion"}
# `hsd compare`'s warm starts for each task (any other task names its own)
WARM_STARTS = {"chain": (TINY, "tiny-seed2"), "chain-any": ("tiny-chain-any", "tiny-chain-any-seed2"),
               "chain-exclusion": ("tiny-chain-exclusion",)}

# what a run reads of a hub model: config, tokenizer, generation config, safetensors weights
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARACTERS = ["\n", "\t"] + [chr(c) for c in range(32, 127)]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DEFAULT_SIZES = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    # vLLM's CPU attention kernels need head_dim >= 32
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
}


def build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, **sizes: int) -> Path:
    """Write tokenizer + randomly initialised Qwen3 model to ``out_dir``; returns it."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**DEFAULT_SIZES, **sizes},
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("HSD_CACHE", Path.home() / ".cache" / "hsd"))


def hub_snapshot(repo_id: str, field: str = "model.path") -> str:
    """The local folder of hub model ``repo_id``: downloaded where a hub is reachable, else
    the copy in the Hugging Face cache; neither: a one-line StartupError. Every process
    (learner, hf and vLLM actors) then reads the same folder, so a hub id works wherever a
    folder does."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=HUB_FILES)
    except Exception as err:  # offline, no such repo, gated: say which and how to fix it
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StartupError(f"{field}: {repo_id!r} is no local folder and cannot be fetched from the hub here "
                           f"({type(err).__name__}: {reason[:200]}); give a model folder, or download it first "
                           "(huggingface-cli download) into the cache this process reads (HF_HOME)") from None


def resolve_model(path: str, field: str = "model.path") -> str:
    """A model folder as is; a hub id: its local snapshot (:func:`hub_snapshot`); a name of
    :data:`SHIPPED`: that shipped model, so that every machine starts from the same weights (``tiny``: rebuilt with ``hsd warm-start
    --task chain --out DIR``); ``tiny-arith``: the built-in model warm-started on the
    arithmetic task, built once and cached under $HSD_CACHE (a file lock makes concurrent
    first starts build it once). ``field``: the config field its errors name."""
    if path in SHIPPED:
        return str(SHIPPED[path])
    if path != TINY_ARITH:
        local = Path(path).expanduser()
        if local.exists() or path.startswith(("/", ".", "~")):
            if not (local / "config.json").is_file():
                raise StartupError(f"{field}: {path!r} is not a model folder (no config.json there); "
                                   f"give a Hugging Face folder, a hub id, {TINY!r} or {TINY_ARITH!r}")
            return str(local)
        return hub_snapshot(path, field)
    target = cache_dir() / "models" / f"tiny-arith-{TINY_VERSION}"
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".tiny-arith-{TINY_VERSION}.lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is building %s (it holds %s): waiting for it", target, lock_path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            from learner.warm_start import warm_start

            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            build_tiny_model(tmp, seed=0)
            warm_start(tmp, "arith")
            tmp.rename(target)
    return str(target)
