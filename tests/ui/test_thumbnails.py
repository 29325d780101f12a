"""The window's thumbnail loader never opens what is not a regular file: a
FIFO among the recent photos (or dropped on the window) would block its
decoding thread for ever, and the window's shutdown waits for that thread."""

from __future__ import annotations

import os
import threading

from ui.portrait_picker import ThumbnailLoader, load_thumbnail


def _within(seconds: float, fn) -> bool:
    done = threading.Event()
    threading.Thread(target=lambda: (fn(), done.set()), daemon=True).start()
    return done.wait(seconds)


def test_a_fifo_thumbnail_is_null_at_once_and_shutdown_is_prompt(qtbot, tmp_path,
                                                                 portrait_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    nulls = []
    assert _within(5.0, lambda: nulls.append(load_thumbnail(str(fifo), 88).isNull()))
    assert nulls == [True]
    assert load_thumbnail(str(tmp_path), 88).isNull()
    assert not load_thumbnail(str(portrait_path), 88).isNull()
    loader = ThumbnailLoader()
    got = []
    loader.loaded.connect(lambda p, s, img: got.append((p, img.isNull())))
    loader.request(str(fifo), 88)
    loader.request(str(portrait_path), 88)
    qtbot.waitUntil(lambda: len(got) == 2, timeout=10000)
    assert got == [(str(fifo), True), (str(portrait_path), False)]
    assert _within(5.0, loader.shutdown)
