"""How a prompt becomes token ids: one function for the actor and for the learner.

The student prompt an actor samples from and the teacher prompt the learner scores with
must be rendered by the same rules, or the credit δ_t measures formatting, not content.
With a chat template the messages go through it (``add_generation_prompt=True``, plus the
run's ``model.chat_template_kwargs``, e.g. Qwen3's ``enable_thinking``, which
:func:`use_chat_template_kwargs` binds to the tokenizer each role renders with); without
one the message contents are joined by blank lines.
"""

from __future__ import annotations

from typing import Any

Messages = list[dict[str, str]]
TEMPLATE_KWARGS = "hsd_chat_template_kwargs"  # the attribute the bound arguments live in


def use_chat_template_kwargs(tokenizer: Any, kwargs: dict[str, Any]) -> Any:
    """``tokenizer``, rendering every prompt with these chat-template arguments from now on
    (bound once where a role loads its tokenizer, so no call site can forget them)."""
    setattr(tokenizer, TEMPLATE_KWARGS, dict(kwargs))
    return tokenizer


def as_messages(prompt: str | Messages) -> Messages:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def with_user_suffix(prompt: str | Messages, suffix: str) -> Messages:
    """The prompt with ``suffix`` appended to its last user message (privileged context)."""
    messages = as_messages(prompt)
    for m in reversed(messages):
        if m["role"] == "user":
            m["content"] = m["content"] + suffix
            return messages
    raise ValueError("the prompt has no user message to extend")


def render_prompt_ids(tokenizer: Any, prompt: str | Messages) -> list[int]:
    """Token ids of the prompt, ending where the assistant's response begins."""
    messages = as_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                             **getattr(tokenizer, TEMPLATE_KWARGS, {}))
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
    return list(tokenizer.encode(text, add_special_tokens=False))
