"""Child processes that a test stops with Ctrl-C (SIGINT)."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` for a child the test interrupts with SIGINT: restore its default action.

    A process started in the background of a non-interactive shell (``nohup .ci/run &``, some CI
    runners) inherits SIGINT *ignored*, and so does everything it starts; Python then installs no
    KeyboardInterrupt handler, and the child would never see the test's Ctrl-C (the test then
    fails by timeout, or the run ends normally with status 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
