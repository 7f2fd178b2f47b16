"""A frame's heatmaps: the full rendering that is pushed and served, and the small one stored.

The frames table keeps each frame's heatmap at the sensor's own resolution (one PNG pixel per
sensor pixel, no caption or scale: about 1.2 KB for 24 × 32), so a frame row stays inside its
InnoDB page instead of taking whole off-page 16 KB pages for a 20 KB PNG (BENCHMARKS.md,
storage). The full 640 × 480 rendering with its scale bar and caption is made from the stored
grid: once when the frame is pushed, and when it is asked for (webapp/heatmaps.py caches it).
"""

from __future__ import annotations

from datetime import datetime

from bridge.config import Config
from bridge.ttn import format_time
from imaging.heatmap import Grid, render_heatmap


def caption(device_id: str, first_received_at: datetime, complete: bool, coverage: float) -> str:
    """The caption under a frame's heatmap: device, time, and how partial it is."""
    text = f"{device_id}  {format_time(first_received_at)}"
    if not complete:
        text += f"  partial {round(coverage * 100)}%"
    return text


def full_png(config: Config, grid: Grid, caption_text: str) -> bytes:
    """The 640 × 480 heatmap with scale bar and caption (the `frame` event, `GET ….png`)."""
    return render_heatmap(
        grid,
        caption=caption_text,
        colormap=config.colormap,
        rotate=config.rotate,
        flip_horizontal=config.flip_horizontal,
        flip_vertical=config.flip_vertical,
    )


def stored_png(config: Config, grid: Grid) -> bytes:
    """The heatmap kept with the frame: one pixel per sensor pixel, oriented as configured."""
    rows = len(grid)
    cols = len(grid[0]) if rows else 0
    width, height = (rows, cols) if config.rotate in (90, 270) else (cols, rows)
    return render_heatmap(
        grid,
        width=max(width, 1),
        height=max(height, 1),
        colormap=config.colormap,
        rotate=config.rotate,
        flip_horizontal=config.flip_horizontal,
        flip_vertical=config.flip_vertical,
        show_scale=False,
        smooth=False,
    )
