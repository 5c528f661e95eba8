"""Small puts that arrive together on one connection are answered by one task in one replicated
write (``put_group``), not a task and an inbox each; each still gets its own refusal, audit
record and idempotency, and every put the group cannot take still runs as a task."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from hdsd import AsyncClient, DiskFullError, HdsdError, LegalHold, NotFound, QuotaExceeded
from hdsd.audit import read_records
from hdsd.node import load_node_config, serve_node
from hdsd.node._connections import Connections, _GroupRunner
from hdsd.wire import PutStart
from tests.helpers.cluster import init_cluster


class _Tasks(trio.abc.Instrument):
    """Counts the tasks the nodes spawn for puts: one per put (``_run_request``) and one per
    group of puts its connection's group runner was busy for (the arguments of a task's
    coroutine are in its frame before it first runs); and, through :meth:`watch`, the
    groups run (by a task of their own, the runner or the connection's reader) and those
    handed to the runner."""

    def __init__(self) -> None:
        self.per_put = 0
        self.group_tasks = 0
        self.groups = 0
        self.runner_groups = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        frame = getattr(task.coro, "cr_frame", None)
        if frame is None:
            return
        if task.name.endswith("._run_request") and isinstance(frame.f_locals.get("msg"),
                                                              PutStart):
            self.per_put += 1
        elif task.name.endswith(".run_group"):
            self.group_tasks += 1

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> _Tasks:
        run_put_group = Connections._run_put_group

        async def counted(connections: Connections, *args: Any) -> None:
            self.groups += 1
            await run_put_group(connections, *args)

        take = _GroupRunner.take

        def taken(runner: _GroupRunner, group: list[PutStart]) -> bool:
            took = take(runner, group)
            self.runner_groups += took
            return took

        monkeypatch.setattr(Connections, "_run_put_group", counted)
        monkeypatch.setattr(_GroupRunner, "take", taken)
        trio.lowlevel.add_instrument(self)
        return self


async def test_small_puts_arriving_together_share_one_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_cluster(tmp_path)
    data = [os.urandom(4096) for _ in range(16)]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                await client.put("b", "warm", b"x")
                await client.hold_set("default", "b", "held")
                seen = _Tasks().watch(monkeypatch)
                results: dict[int, object] = {}

                async def put(i: int) -> None:
                    key = "held" if i == 15 else f"k{i}"
                    try:
                        results[i] = await client.put("b", key, data[i])
                    except LegalHold as exc:
                        results[i] = exc

                async with trio.open_nursery() as puts:
                    for i in range(16):
                        puts.start_soon(put, i)
                trio.lowlevel.remove_instrument(seen)
                # No put had a task of its own: they came in groups (as many as the reads
                # they arrived in), and the refused one was refused alone.
                assert seen.per_put == 0
                assert 1 <= seen.groups <= 16
                assert isinstance(results.pop(15), LegalHold)
                for i in range(15):
                    assert await client.get("b", f"k{i}") == data[i]
                    assert results[i].version == (  # type: ignore[attr-defined]
                        await client.stat("b", f"k{i}")).version

                # The same request id twice at once: the second attempt cannot join the group
                # of the first (it must wait for it), so it is a task, and sees the first's
                # version instead of writing a second one.
                seen = _Tasks()
                trio.lowlevel.add_instrument(seen)
                twice: list[object] = []

                async def attempt() -> None:
                    twice.append(await client.put("b", "once", b"same", request_id=b"r" * 16))

                async with trio.open_nursery() as attempts:
                    attempts.start_soon(attempt)
                    attempts.start_soon(attempt)
                trio.lowlevel.remove_instrument(seen)
                assert seen.per_put == 1
                assert len({info.version for info in twice}) == 1  # type: ignore[attr-defined]
                assert len(await client.versions("b", "once")) == 1

            coordinator = nodes[0]
            # Nothing left behind: request id slots, quota reservations, held body bytes.
            assert coordinator._requests_in_flight == {}
            assert not any(coordinator.tenancy._reserved.values())
            # One audit record per put, its own outcome and bytes (names are sealed).
            await trio.to_thread.run_sync(coordinator.audit.checkpoint_and_wait)
            records = [r for r in read_records(coordinator.config.data_dir / "audit")
                       if r.op == "PutStart"]
            assert Counter((r.outcome, r.bytes_in) for r in records) == {
                ("ok", 1): 1, ("ok", 4096): 15, (LegalHold.code, 0): 1, ("ok", 4): 2}
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("declared", [True, False])
async def test_a_lone_small_put_goes_the_same_way(tmp_path: Path, declared: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One put alone makes a group of one (also of undeclared size, when its body came with
    its start), run by the connection's reader itself: no task spawned, none handed the
    group; a put over inline_max still runs as a task."""
    init_cluster(tmp_path)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for n in ("dc1-n1", "dc2-n1"):
                await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                # (Until a started node knows where its audit chain resumes, its first puts
                # wait for that as tasks.)
                await client.put("b", "warm", b"x")
                seen = _Tasks().watch(monkeypatch)
                small = os.urandom(1000)
                big = os.urandom(200_000)

                async def chunks(data: bytes) -> object:
                    yield data

                for key, data in (("small", small), ("big", big)):
                    await client.put("b", key, data if declared else chunks(data))
                trio.lowlevel.remove_instrument(seen)
                assert seen.group_tasks == 0  # the runner was free: one put at a time
                if declared:
                    assert (seen.groups, seen.per_put) == (1, 1)
                    assert seen.runner_groups == 0  # the reader ran it
                else:  # a streamed body may or may not arrive in the read of its start
                    assert seen.groups + seen.per_put == 2 and seen.per_put >= 1
                assert await client.get("b", "small") == small
                assert await client.get("b", "big") == big
            nursery.cancel_scope.cancel()


async def test_a_group_s_puts_are_admitted_against_the_quota_one_by_one(tmp_path: Path) -> None:
    """Each put of a group reserves its size in turn, so the puts of one group cannot overshoot
    the tenant's quota together; the refused ones are refused alone, and every reservation is
    given back once the group is answered."""
    init_cluster(tmp_path)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                await client.put("b", "warm", b"x")
                quota = 3 * 4096 + 100
                await client.tenant_create("default", quota)
                seen = _Tasks()
                trio.lowlevel.add_instrument(seen)
                outcomes: list[str] = []

                async def put(i: int) -> None:
                    try:
                        await client.put("b", f"q{i}", os.urandom(4096))
                        outcomes.append("ok")
                    except QuotaExceeded:
                        outcomes.append("quota")

                async with trio.open_nursery() as puts:
                    for i in range(6):
                        puts.start_soon(put, i)
                trio.lowlevel.remove_instrument(seen)
                assert seen.per_put == 0
                assert sorted(outcomes) == ["ok"] * 3 + ["quota"] * 3
            assert not any(nodes[0].tenancy._reserved.values())
            nursery.cancel_scope.cancel()


async def test_a_failed_group_write_fails_the_puts_it_carried_and_no_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The group's write failing is the failure of each put it carried (its error, its audit
    record), while a put refused before the write keeps its own refusal; nothing is left
    held, and nothing was stored."""
    init_cluster(tmp_path)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            coordinator = nodes[0]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                await client.put("b", "warm", b"x")
                await client.hold_set("default", "b", "held")

                async def full(*args: object) -> None:
                    raise DiskFullError("no space left on the data disk (test)")

                monkeypatch.setattr(coordinator.small_writes, "write", full)
                seen = _Tasks().watch(monkeypatch)
                results: dict[int, HdsdError] = {}

                async def put(i: int) -> None:
                    try:
                        await client.put("b", "held" if i == 15 else f"k{i}", os.urandom(4096))
                    except HdsdError as exc:
                        results[i] = exc

                async with trio.open_nursery() as puts:
                    for i in range(16):
                        puts.start_soon(put, i)
                trio.lowlevel.remove_instrument(seen)
                monkeypatch.undo()
                assert seen.per_put == 0  # every put was answered by its group
                assert isinstance(results.pop(15), LegalHold)
                assert sorted(results) == list(range(15))
                assert {exc.code for exc in results.values()} == {DiskFullError.code}
                for i in range(15):
                    with pytest.raises(NotFound):
                        await client.stat("b", f"k{i}")
            assert coordinator._requests_in_flight == {}
            assert not any(coordinator.tenancy._reserved.values())
            await trio.to_thread.run_sync(coordinator.audit.checkpoint_and_wait)
            records = [r for r in read_records(coordinator.config.data_dir / "audit")
                       if r.op == "PutStart"]
            assert Counter(r.outcome for r in records) == {
                "ok": 1, DiskFullError.code: 15, LegalHold.code: 1}
            nursery.cancel_scope.cancel()


async def test_a_lone_put_s_failure_run_by_the_reader_ends_that_put_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone small put is run by its connection's reader (no task, no runner): its write
    failing is that put's error, and the reader reads on — the next put on the same
    connection is stored, and nothing is left held."""
    init_cluster(tmp_path)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes = [await nursery.start(serve_node, load_node_config(tmp_path / n / "node.toml"))
                     for n in ("dc1-n1", "dc2-n1")]
            coordinator = nodes[0]
            async with AsyncClient(tmp_path / "client.toml", site="dc1") as client:
                await client.put("b", "warm", b"x")

                async def full(*args: object) -> None:
                    raise DiskFullError("no space left on the data disk (test)")

                seen = _Tasks().watch(monkeypatch)
                with monkeypatch.context() as patched:
                    patched.setattr(coordinator.small_writes, "write", full)
                    with pytest.raises(DiskFullError):
                        await client.put("b", "lost", os.urandom(4096))
                data = os.urandom(4096)
                info = await client.put("b", "kept", data)
                trio.lowlevel.remove_instrument(seen)
                assert (seen.groups, seen.runner_groups, seen.group_tasks, seen.per_put) == (
                    2, 0, 0, 0)
                assert await client.get("b", "kept") == data
                assert (await client.stat("b", "kept")).version == info.version
                with pytest.raises(NotFound):
                    await client.stat("b", "lost")
            assert coordinator._requests_in_flight == {}
            assert not any(coordinator.tenancy._reserved.values())
            nursery.cancel_scope.cancel()
