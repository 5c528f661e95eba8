"""``hdsd bench sync``: run the synchronisation benchmark (``bench/sync_latency.py``).

The benchmark lives in the source tree, not in the installed package (it starts servers, may run
peer databases and writes gigabytes): this command finds it beside the package of an editable or
source install and runs its ``main`` with the arguments given, so the options are exactly the
script's (``hdsd bench sync --help`` shows them).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click

from .._errors import ConfigError
from ._main import main

_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "sync_latency.py"


@main.group()
def bench() -> None:
    """Benchmarks of a local throw-away cluster (needs the hdsd source tree)."""


@bench.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sync(args: tuple[str, ...]) -> None:
    """Two-site put/get latency and throughput, floor, peers, catch-up (see --help)."""
    if not _SCRIPT.is_file():
        # A wheel install has no bench/: say what to do, not which file is missing.
        raise ConfigError("hdsd bench sync needs a source checkout of hdsd (the benchmark is "
                          "not installed with the package): from a checkout, run "
                          "`pip install -e .` and try again, or `python bench/sync_latency.py`")
    spec = importlib.util.spec_from_file_location("hdsd_bench_sync_latency", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    code: int = module.main(list(args))
    sys.exit(code)
