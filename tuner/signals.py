"""Signals as a safe-point protocol: SIGINT/SIGTERM are recorded by the CLI's handler and raised
as ``Interrupted`` at the next ``checkpoint()`` inside a ``deferred_signals`` block (between
optimisation steps, between polls), never from inside library code."""

from __future__ import annotations


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (``docker stop``, systemd, the launcher) arrived. Raised by the
    signal handlers the CLI installs; a ``BaseException`` so ``except Exception`` never eats it.
    Exit code 128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum


# -- signals ---------------------------------------------------------------------------------
# In a worker, and in the launcher while its workers run, a signal is only recorded and acted on
# at the next safe point (between optimisation steps, between polls): raised from the handler it
# can land inside library code — a context manager's __exit__ (stray tracebacks, half-written
# state) or a finaliser, where Python prints it as "Exception ignored" and drops it. A signal
# raised and dropped that way is still recorded, so the next checkpoint() acts on it.
_pending: list[int] = []
_deferring = [0]  # nesting depth of deferred_signals blocks


def on_signal(signum: int, _frame: object = None) -> None:
    """The SIGINT/SIGTERM handler the CLI installs. Only the first signal counts: a second one
    (Ctrl-C pressed twice, the launcher's SIGTERM right after the terminal's SIGINT) must not cut
    the clean-up short. The handler stays installed rather than switching to SIG_IGN: a signal
    already delivered but not yet handled would then be reported by Python as "ignored due to
    race condition", with a traceback."""
    if _pending:
        return
    _pending.append(signum)
    if not _deferring[0]:
        raise Interrupted(signum)


def checkpoint() -> None:
    """Raise ``Interrupted`` here if a signal arrived while deferred."""
    if _pending:
        raise Interrupted(_pending[0])


class deferred_signals:
    """Inside the block signals are recorded, not raised; ``checkpoint()`` raises them."""

    def __enter__(self) -> None:
        _deferring[0] += 1

    def __exit__(self, *exc: object) -> None:
        _deferring[0] -= 1
