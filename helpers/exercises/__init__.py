"""Exercise checking shared by every chapter.

A chapter's checkers live in ``helpers/exercises/chNN_<stem>.py``: functions that take the
learner's answer and raise ``AssertionError`` with a hint when it is wrong. ``check`` runs one:

- the learner's stub still raises ``NotImplementedError``: "not attempted yet" (returns False),
  so a chapter runs top to bottom before the exercises are done;
- the checker passes: a pass line (returns True);
- the checker fails: ``ExerciseFailed`` with the hint, so the mistake is impossible to miss.
"""

from __future__ import annotations

from collections.abc import Callable


class ExerciseFailed(AssertionError):
    """The learner's answer is wrong; the message says how."""


def check(exercise: str, answer, checker: Callable[[object], None]) -> bool:
    """Run ``checker(answer)`` and report the outcome (see the module docstring)."""
    try:
        checker(answer)
    except NotImplementedError:
        print(f"[{exercise}] not attempted yet: fill in the cell above and run this one again.")
        return False
    except AssertionError as err:
        raise ExerciseFailed(f"[{exercise}] not yet right: {err}") from None
    print(f"[{exercise}] correct. Well done.")
    return True
