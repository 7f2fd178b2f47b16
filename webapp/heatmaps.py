"""The full heatmap of a stored frame, rendered from its grid on request and kept in a small
cache (bridge/renderings.py says why the frames table keeps only a small one)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

from bridge import renderings
from bridge.config import Config
from db.gridpack import unpack_grid
from db.store import FrameRecord, Store

CACHED_FRAMES = 512  # ~10 MB of 640 × 480 PNGs: the frames a dashboard shows now and just before

# Per store (a process may hold several apps, each on its database), newest used last.
_caches: weakref.WeakKeyDictionary[Store, OrderedDict[tuple[object, ...], bytes]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def frame_png(store: Store, config: Config, frame: FrameRecord) -> bytes | None:
    """The frame's 640 × 480 PNG (None if the frame is gone), the same as its `frame` event's."""
    # A frame re-stored by a late fragment changes its last_received_at and coverage.
    key = (
        frame.frame_id,
        frame.last_received_at,
        frame.coverage,
        config.colormap,
        config.rotate,
        config.flip_horizontal,
        config.flip_vertical,
    )
    with _lock:
        cache = _caches.setdefault(store, OrderedDict())
        png = cache.get(key)
        if png is not None:
            cache.move_to_end(key)
            return png
    data = store.frame_grid(frame.frame_id)
    if data is None:
        return None
    grid = unpack_grid(data, frame.grid_rows, frame.grid_cols)
    caption = renderings.caption(
        frame.device_id, frame.first_received_at, frame.complete, frame.coverage
    )
    png = renderings.full_png(config, grid, caption)
    with _lock:
        cache[key] = png
        while len(cache) > CACHED_FRAMES:
            cache.popitem(last=False)
    return png
