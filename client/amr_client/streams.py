"""Streamed score answers as the client hands them out, and the progress option of `score`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator

from amr_client.results import ScoreResult
from amr_client.schemas import ScoredGroup

# True: a bar (tqdm if installed, else lines on stderr); a callable gets (done, total).
Progress = bool | Callable[[int, int], None]


class ScoreStream:
    """`(index, ScoredGroup)` pairs in completion order; `result` is set once the loop ends."""

    def __init__(self):
        self._items: Iterator[tuple[int, ScoredGroup]] | None = None
        self.result: ScoreResult | None = None

    def __iter__(self) -> Iterator[tuple[int, ScoredGroup]]:
        yield from self._items


class AsyncScoreStream:
    """The async twin of `ScoreStream`: `async for index, group in stream`."""

    def __init__(self):
        self._items: AsyncIterator[tuple[int, ScoredGroup]] | None = None
        self.result: ScoreResult | None = None

    async def __aiter__(self) -> AsyncIterator[tuple[int, ScoredGroup]]:
        async for item in self._items:
            yield item


@contextlib.contextmanager
def progress_reporter(progress: Progress, total: int):
    """A `tick()` to call once per finished group."""
    done = 0
    if callable(progress):
        def tick():
            nonlocal done
            done += 1
            progress(done, total)
        yield tick
        return
    try:
        from tqdm import tqdm
    except ImportError:
        def tick():
            nonlocal done
            done += 1
            print(f"scored {done}/{total} groups", file=sys.stderr, flush=True)
        yield tick
        return
    with tqdm(total=total, unit="group", file=sys.stderr) as bar:
        yield lambda: bar.update(1)
