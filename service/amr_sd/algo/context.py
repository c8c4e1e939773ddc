"""Token-level context building (docs/method.md step 6).

The response ids are never re-tokenised: each scoring sequence is `prompt ids + response ids`,
and the engine scores from `start = len(prompt ids)`. Only prompts are rendered from text, with
the tokenizer's own chat template, so student and teacher contexts differ by the reflection block
alone.
"""

from __future__ import annotations

from typing import Sequence


def with_block(messages: Sequence[dict], block: str) -> list[dict]:
    """Copy of `messages` with `block` appended to the last user message (G5: nothing else)."""
    out = [dict(m) for m in messages]
    last_user = max(k for k, m in enumerate(out) if m["role"] == "user")
    out[last_user]["content"] = out[last_user]["content"] + block
    return out


def render_prompt(tokenizer, *, messages: Sequence[dict] | None = None, text: str | None = None,
                  prefill: str = "") -> list[int]:
    """Prompt ids as the policy sees them: chat template with the generation prompt, or raw text.

    `prefill` opens the assistant turn (the writer's `<hint>`), so generation continues inside it.
    """
    if messages is not None and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False)
        # The template already holds the special tokens (BOS, role markers): add none twice.
        return tokenizer.encode(rendered + prefill, add_special_tokens=False)
    if messages is not None:
        text = "\n\n".join(m["content"] for m in messages) + "\n"
    return tokenizer.encode(text + prefill)


def splice(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> tuple[list[int], int]:
    """(sequence, start): score `sequence[start:]`, which is exactly `response_ids`."""
    return list(prompt_ids) + list(response_ids), len(prompt_ids)
