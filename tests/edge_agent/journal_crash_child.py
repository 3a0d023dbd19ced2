"""Child process for the kill -9 test: journals readings through the committer and prints
`ack <seq> <row id>` (flushed) after each append returns, i.e. once the reading is durable and
could be acknowledged to the device. The parent kills it with SIGKILL at a random moment.

Usage: python journal_crash_child.py <db path> <first seq> <random seed>
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from edge_agent.journal import Journal, NewMessage, Priority


async def journal_readings(path: str, first_seq: int, rng: random.Random) -> None:
    journal = await Journal.open(path)
    out = sys.stdout
    seq = first_seq

    async def append_and_ack(seq: int, priority: int) -> None:
        payload = f"crash-dev/{seq}/".encode() + os.urandom(rng.randrange(16, 400))
        message = NewMessage(
            "readings",
            "crash-dev",
            payload,
            priority=priority,
            first_seq=seq,
            last_seq=seq,
            count=1,
        )
        row_id = await journal.append(message)
        out.write(f"ack {seq} {row_id}\n")
        out.flush()

    while True:  # until killed
        burst = rng.randrange(1, 300)
        tasks = []
        for _ in range(burst):
            priority = Priority.ALARM if rng.random() < 0.02 else Priority.ROUTINE
            tasks.append(append_and_ack(seq, priority))
            seq += 1
        await asyncio.gather(*tasks)
        # Exercise the state updates too, so kills also land inside those transactions.
        batch = await journal.next_batch(limit=rng.randrange(1, 100))
        await journal.mark_sent([m.id for m in batch])
        await journal.mark_received([m.digest for m in batch[::2]])
        await asyncio.sleep(rng.random() * 0.01)


def main() -> None:
    path, first_seq, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    asyncio.run(journal_readings(path, first_seq, random.Random(seed)))


if __name__ == "__main__":
    main()
