"""The flow-control patch: a resume that is not after a suspension keeps what is queued for the agent.

(The end-to-end proof is tests/test_stream_resilience.py: a worker killed and restarted on a
backlog lost rows in 7 of 16 runs without the patches, 0 of 18 with them.)
"""
from __future__ import annotations

import asyncio

from streams import faust_fixes


def test_resume_keeps_queued_messages_unless_flow_was_suspended():
    faust_fixes.apply()
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    async def scenario() -> tuple[int, int]:
        flow = FlowControlEvent()
        flow.resume()
        queue = FlowControlQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
        queue.put_nowait("offset 4")
        queue.put_nowait("offset 5")
        flow.resume()  # recovery's last resume, flow already active: messages of this generation stay
        kept = queue.qsize()
        flow.suspend()  # a rebalance: what was queued before it is of an older generation
        flow.resume()
        return kept, queue.qsize()

    kept, after_suspension = asyncio.run(scenario())
    assert kept == 2
    assert after_suspension == 0
