"""Shared test configuration.

Hypothesis: the ``ci`` profile (bounded, derandomized) is used when ``CI`` is set, so CI is
deterministic; locally the ``dev`` profile explores more, randomly. ``HYPOTHESIS_PROFILE``
overrides both (``HYPOTHESIS_PROFILE=long`` for a soak).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers.cluster import STARTED, forget_dead_nodes

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
