"""The wording the teachers and the reviser add to a prompt, from ``[algorithm]``
(``peer_template``, ``answer_template``, ``teacher_closing``, ``revision_right``,
``revision_wrong``): one value a run, read by every view that builds a teacher's context,
so that the actor's reviser context and the learner's teacher view say the same."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import AlgorithmConfig


@dataclass(frozen=True)
class Templates:
    peer: str  # {peer}
    answer: str  # {answer}
    closing: str
    revision_right: str
    revision_wrong: str

    @classmethod
    def of(cls, algo: AlgorithmConfig) -> Templates:
        return cls(algo.peer_template, algo.answer_template, algo.teacher_closing, algo.revision_right,
                   algo.revision_wrong)

    def revision(self, success: bool) -> str:
        """What follows an attempt with this reward in the reviser's context."""
        return self.revision_right if success else self.revision_wrong


DEFAULT = Templates.of(AlgorithmConfig())  # the defaults: what the shipped warm starts were trained with
