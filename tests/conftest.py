"""Shared test configuration.

Hypothesis: the ``ci`` profile (bounded, derandomized) is used when ``CI`` is set, so CI is
deterministic; locally the ``dev`` profile explores more, randomly. ``HYPOTHESIS_PROFILE``
overrides both (``HYPOTHESIS_PROFILE=long`` for a soak).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers.cluster import STARTED, forget_dead_nodes


def _bytecode_for_subprocesses() -> None:
    """Let the ``hdsd`` processes the tests start (nodes, the CLI: hundreds per run) read and
    write compiled bytecode, in a cache outside the source tree.

    With ``PYTHONDONTWRITEBYTECODE`` set in the environment, every one of them compiled hdsd's
    163 modules from source again: 1.3 s of CPU at each node start or CLI call (cProfile of
    ``hdsd init``: 297 ``compile`` calls, 1.28 s of 3.5 s), on a 2-core machine. The variable's
    purpose, no ``__pycache__`` in the tree, is kept: the cache goes to a private directory of
    the temporary one (``PYTHONPYCACHEPREFIX``); a file there is used only while its source's
    size and mtime match."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    cache = Path(tempfile.gettempdir()) / f"hdsd-tests-pycache-{os.getuid()}"
    try:
        cache.mkdir(mode=0o700, exist_ok=True)
        info = cache.stat()
    except OSError:
        return
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        return  # not ours alone: compile as before rather than run another user's bytecode
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    del os.environ["PYTHONDONTWRITEBYTECODE"]


_bytecode_for_subprocesses()

settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True)
_default = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or _default)


def pytest_addoption(parser: pytest.Parser) -> None:
    # The long form of tests/e2e/test_nemesis.py (also HDSD_NEMESIS_S / HDSD_NEMESIS_SEEDS).
    parser.addoption("--nemesis-seconds", default=None,
                     help="fault period of the nemesis test, seconds (CI: 30)")
    parser.addoption("--nemesis-seeds", default=None,
                     help="nemesis seeds: a count from HDSD_NEMESIS_SEED (default 2), or a list "
                          "like 4,7,9")


@pytest.fixture(autouse=True)
def _node_logs_of_this_test() -> None:
    forget_dead_nodes()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    # A real-process test that fails shows what its nodes logged last: an e2e failure under
    # load (a peer that did not answer) is otherwise not diagnosable after the fact.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        for node in STARTED:
            lines = node.stderr_lines[-60:]
            report.sections.append((f"node {node.config.parent.name} (last {len(lines)} "
                                    "log lines)", "\n".join(lines)))
