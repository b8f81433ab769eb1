"""`hsd credit`'s views: ANSI colours on a terminal, plain `token[δ]` text elsewhere."""

from __future__ import annotations

from learner.credit_cli import colour


def test_plain_text_marks_the_divergence_and_carries_every_delta():
    text = colour(["a", "\n", "b"], [0.5, -1.25, 0.0], divergence=1, ansi=False)
    assert text == "a[+0.50] >>⏎[-1.25] b[+0.00]"


def test_terminal_colours_scale_with_the_delta_and_underline_the_divergence():
    text = colour(["a", "b"], [-2.0, 0.1], divergence=0)
    assert text.startswith("\033[48;5;196m\033[4ma\033[0m")  # strongest red, underlined
    assert "\033[48;5;22mb\033[0m" in text  # faint green
