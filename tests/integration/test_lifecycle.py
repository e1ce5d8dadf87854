"""Lifecycle: run_async on the application's loop; run() turns SIGTERM into a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from pyrallel import ConsumerStateError, Message, ParallelConsumer
from tests.support.consuming import committed, config, running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker


def test_run_async_runs_handlers_on_the_application_loop(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    topic = make_topic(partitions=2)
    produced = produce_keyed(topic, 500, keys=20)
    loops: set[int] = set()
    seen: set[int] = set()

    async def main() -> None:
        app_loop = asyncio.get_running_loop()

        async def handle(msg: Message) -> None:
            loops.add(id(asyncio.get_running_loop()))
            seen.add(msg.offset * 10 + msg.partition)

        consumer = ParallelConsumer(config(bootstrap, group_id, [topic]), handle)
        task = asyncio.create_task(consumer.run_async())

        async def done() -> None:
            while True:
                snap = consumer.get_metrics().partitions
                ends = produced.end_offsets
                if all(
                    (p := snap.get((topic, part))) and p.committed_offset == end
                    for part, end in ends.items()
                ):
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(done(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loops == {id(app_loop)}

    asyncio.run(main())
    assert len(seen) == 500
    assert committed(bootstrap, group_id, topic, 2) == produced.end_offsets


def test_start_twice_is_refused(bootstrap: str, make_topic: Any, group_id: str) -> None:
    topic = make_topic(partitions=1)

    async def handle(msg: Message) -> None:
        return None

    consumer = ParallelConsumer(config(bootstrap, group_id, [topic]), handle)
    with running(consumer), pytest.raises(ConsumerStateError):
        consumer.start()


def test_sigterm_drains_commits_and_exits_zero(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str, tmp_path: Any
) -> None:
    topic = make_topic(partitions=1)
    produce_keyed(topic, 2000, keys=50)
    progress = tmp_path / "done.txt"
    script = textwrap.dedent(
        f"""
        import asyncio, pyrallel
        out = open({str(progress)!r}, "a", buffering=1)
        async def handle(msg):
            await asyncio.sleep(0.01)
            out.write(f"{{msg.offset}}\\n")
        cfg = pyrallel.ConsumerConfig(
            bootstrap_servers={bootstrap!r}, group_id={group_id!r}, topics=[{topic!r}],
            max_in_flight_messages=50, commit_interval_ms=200,
            kafka={{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}},
        )
        pyrallel.ParallelConsumer(cfg, handle).run()
        print("clean exit")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        wait_until(
            lambda: progress.exists() and len(progress.read_text().split()) > 300,
            timeout=60,
            message="the consumer process to make progress",
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "clean exit" in out
    done = {int(x) for x in progress.read_text().split()}
    commit = committed(bootstrap, group_id, topic, 1)[0]
    # Everything below the commit ran, and the commit sits at the first offset not run.
    assert set(range(commit)) <= done
    assert commit not in done
    assert commit > 300
