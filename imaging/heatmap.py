"""Temperature grid → PNG heatmap with a scale bar, plus the grid's statistics and histogram.

Pure: no I/O, no clock, no matplotlib. A grid is a sequence of rows of °C values where
``None`` is a no-data pixel (PROTOCOL.md, FPort 1: the value -2048, or a row that never
arrived in a partial frame); NaN and ±inf count as no data as well.

Why it is fast: the image is built as an 8-bit *palette* image. Each pixel is one byte, an
index into a palette made once per colormap from its 256-entry lookup table
(`imaging/colormaps.py`), so the whole picture is numpy indexing on uint8 arrays. Text is
stamped from glyphs drawn once by Pillow and cached, and the PNG is written here (`encode_png`)
with ISA-L's deflate, several times faster than zlib's: those two were most of a frame's cost.
The palette holds `LEVELS` colormap levels (both ends of the colormap included) and a few fixed
colours for the background, the text and the no-data hatching.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from isal import isal_zlib
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from imaging.colormaps import LUTS

Grid = Sequence[Sequence[float | None]]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

COLORMAPS: tuple[str, ...] = tuple(LUTS)
ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)
MAX_BINS = 200
MAX_SIDE_PX = 8192

# Palette layout: indexes 0..LEVELS-1 are the colormap from coldest to hottest, the rest are
# fixed colours. No-data pixels are hatched in two neutral greys so that they read as "no data"
# even with the grey colormap.
LEVELS = 250
BACKGROUND = LEVELS
TEXT = LEVELS + 1
NO_DATA = LEVELS + 2
NO_DATA_HATCH = LEVELS + 3
_FIXED_COLOURS: tuple[tuple[int, int, int], ...] = (
    (24, 24, 27),  # BACKGROUND
    (235, 235, 235),  # TEXT
    (128, 128, 128),  # NO_DATA
    (96, 96, 96),  # NO_DATA_HATCH
)
NO_DATA_RGB = _FIXED_COLOURS[NO_DATA - LEVELS]
NO_DATA_HATCH_RGB = _FIXED_COLOURS[NO_DATA_HATCH - LEVELS]
HATCH_PERIOD_PX = 8
PNG_COMPRESS_LEVEL = 1  # ISA-L's level 1: 0.15 ms for a 640 × 480 frame; level 3 costs 7×

# Smooth rendering interpolates at 1/SMOOTH_BLOCK_PX of the output size and repeats each pixel:
# at 640 × 480 that is about 5× the sensor's resolution, which looks as smooth as interpolating
# every output pixel, while zlib finds the repeated rows and runs (measured here: a third of the
# PNG bytes and of the time, see BENCHMARKS.md).
SMOOTH_BLOCK_PX = 4
_SCALE_BAR_WIDTH_FRACTION = 0.035
_MIN_HEATMAP_PX = 8


@lru_cache(maxsize=len(LUTS))
def _palette(colormap: str) -> bytes:
    """The 768-byte PNG palette of a colormap: LEVELS samples of its LUT, then fixed colours."""
    lut = np.asarray(LUTS[colormap], dtype=np.uint8)
    picks = np.rint(np.linspace(0, len(lut) - 1, LEVELS)).astype(np.intp)
    fixed = np.asarray(_FIXED_COLOURS, dtype=np.uint8)
    spare = np.zeros((256 - LEVELS - len(fixed), 3), dtype=np.uint8)
    return np.concatenate([lut[picks], fixed, spare]).tobytes()


def _as_array(grid: Grid) -> NDArray[np.float64]:
    """The grid as a rows × cols float array with NaN for no data; ValueError if malformed."""
    if len(grid) == 0:
        raise ValueError("grid is empty: it needs at least one row")
    cols = len(grid[0])
    if cols == 0:
        raise ValueError("grid is empty: row 0 has no values")
    for number, row in enumerate(grid):
        if len(row) != cols:
            raise ValueError(
                f"grid is ragged: row {number} has {len(row)} values, row 0 has {cols}"
            )
    try:
        # numpy turns None into NaN for a float dtype.
        array = np.array(grid, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"grid values must be numbers or None: {exc}") from None
    if array.ndim != 2:
        raise ValueError(f"grid must be rows of numbers, got an array of shape {array.shape}")
    array[~np.isfinite(array)] = np.nan
    return array


def _real(grid: Grid) -> NDArray[np.float64]:
    """The real (finite, not None) pixel values of a grid, flattened."""
    array = _as_array(grid)
    return array[~np.isnan(array)]


def grid_stats(grid: Grid) -> tuple[float, float, float] | None:
    """(min, max, mean) of the real pixels, one decimal each; None when every pixel is no data."""
    values = _real(grid)
    if values.size == 0:
        return None
    return (
        round(float(values.min()), 1),
        round(float(values.max()), 1),
        round(float(values.mean()), 1),
    )


def histogram(grid: Grid, bins: int = 20) -> list[dict[str, float | int]]:
    """Equal-width bins over the real pixels' range: ``{"lo", "hi", "count"}`` each, coldest first.

    The last bin includes its upper edge. A flat grid gives one bin holding every real pixel;
    a grid without real pixels gives ``[]``.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an integer from 1 to {MAX_BINS}, got {bins!r}")
    values = _real(grid)
    if values.size == 0:
        return []
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return [{"lo": round(lo, 1), "hi": round(hi, 1), "count": int(values.size)}]
    # Computed by hand rather than with np.histogram, which rejects very narrow ranges.
    with np.errstate(over="ignore", invalid="ignore"):
        position = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * bins
    index = np.minimum(position.astype(np.intp), bins - 1)
    counts = np.bincount(index, minlength=bins)
    width = (hi - lo) / bins
    return [
        {
            "lo": round(lo + i * width, 1),
            "hi": round(hi if i == bins - 1 else lo + (i + 1) * width, 1),
            "count": int(counts[i]),
        }
        for i in range(bins)
    ]


def _colour_range(
    array: NDArray[np.float64], vmin: float | None, vmax: float | None
) -> tuple[float, float, bool]:
    """(lo, hi, known) of the colour scale; known is False when nothing sets the range."""
    for name, value in (("vmin", vmin), ("vmax", vmax)):
        if value is not None and not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if vmin is not None and vmax is not None and vmin >= vmax:
        raise ValueError(f"vmin must be below vmax, got vmin={vmin} and vmax={vmax}")
    has_data = not bool(np.isnan(array).all())
    data_lo = float(np.nanmin(array)) if has_data else 0.0
    data_hi = float(np.nanmax(array)) if has_data else 0.0
    lo = float(vmin) if vmin is not None else data_lo
    hi = float(vmax) if vmax is not None else data_hi
    if hi <= lo:
        # A flat grid, or one bound given beyond the data: widen to a 1 °C range so that
        # nothing divides by zero and a flat grid shows the middle colour.
        if vmin is None and vmax is None:
            lo, hi = lo - 0.5, hi + 0.5
        elif vmax is None:
            hi = lo + 1.0
        else:
            lo = hi - 1.0
    return lo, hi, has_data or vmin is not None or vmax is not None


def _level_indexes(array: NDArray[np.float64], lo: float, hi: float) -> NDArray[np.uint8]:
    """Palette index of every pixel: 0..LEVELS-1 by temperature, NO_DATA where there is none."""
    missing = np.isnan(array)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.clip((np.where(missing, lo, array) - lo) / (hi - lo), 0.0, 1.0)
    levels = np.rint(scaled * (LEVELS - 1)).astype(np.uint8)
    levels[missing] = NO_DATA
    return levels


def _orient(
    levels: NDArray[Any], rotate: int, flip_horizontal: bool, flip_vertical: bool
) -> NDArray[Any]:
    """Rotate clockwise by `rotate` degrees, then mirror the rotated image as asked."""
    oriented = np.rot90(levels, k=-(int(rotate) // 90))
    if flip_horizontal:
        oriented = oriented[:, ::-1]
    if flip_vertical:
        oriented = oriented[::-1, :]
    return oriented


@lru_cache(maxsize=8)
def _stripes(height: int, width: int) -> NDArray[np.bool_]:
    """Diagonal hatching stripes for no-data cells (read-only, cached per image size)."""
    stripes = np.add.outer(np.arange(height), np.arange(width)) % HATCH_PERIOD_PX < 2
    stripes.flags.writeable = False
    return stripes


def _upscale(levels: NDArray[np.uint8], height: int, width: int) -> NDArray[np.uint8]:
    """Nearest-neighbour resize to height × width, with no-data pixels hatched."""
    rows, cols = levels.shape
    # How many output rows / columns each cell covers: cell i gets output pixels p with
    # p * cells // size == i. np.repeat with these counts is much faster than fancy indexing.
    row_counts = np.bincount((np.arange(height) * rows) // height, minlength=rows)
    col_counts = np.bincount((np.arange(width) * cols) // width, minlength=cols)
    return _hatch(np.repeat(np.repeat(levels, col_counts, axis=1), row_counts, axis=0))


@lru_cache(maxsize=32)
def _bilinear_weights(cells: int, size: int) -> NDArray[np.float64]:
    """size × cells matrix that samples `cells` values at `size` evenly spaced output pixels.

    Output pixel p sits at cell coordinate (p + 0.5) · cells / size − 0.5 (pixel centres on
    cell centres, edges clamped) and takes the two nearest cells with linear weights.
    """
    position = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0.0, cells - 1.0)
    below = np.floor(position).astype(np.intp)
    above = np.minimum(below + 1, cells - 1)
    fraction = position - below
    weights = np.zeros((size, cells), dtype=np.float64)
    np.add.at(weights, (np.arange(size), below), 1.0 - fraction)
    np.add.at(weights, (np.arange(size), above), fraction)
    weights.flags.writeable = False
    return weights


def _smooth(array: NDArray[np.float64], height: int, width: int) -> NDArray[np.float64]:
    """Bilinear resize of a grid with NaN for no data to height × width.

    Normalised interpolation: values and a have-data mask are resized alike and divided, so
    no-data cells never pull real temperatures towards zero; an output pixel whose weight comes
    mostly (≥ half) from no-data cells is no data itself, which keeps a missing row about as
    tall as the row it replaces. Two small matrix products, no per-pixel Python.
    """
    rows_w = _bilinear_weights(array.shape[0], height)
    cols_w = _bilinear_weights(array.shape[1], width)
    have = ~np.isnan(array)
    values = np.where(have, array, 0.0)
    total = rows_w @ values @ cols_w.T
    weight = rows_w @ have.astype(np.float64) @ cols_w.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weight >= 0.5, total / weight, np.nan)


def _hatch(big: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Hatch the no-data pixels of an image-sized palette array in place, and return it."""
    if (big == NO_DATA).any():
        height, width = big.shape
        np.copyto(big, NO_DATA_HATCH, where=(big == NO_DATA) & _stripes(height, width))
    return big


def _label(value: float, known: bool) -> str:
    """A scale label in °C with one decimal."""
    return f"{value:.1f} °C" if known else "-- °C"


@lru_cache(maxsize=4096)
def _glyph(font: Font, char: str) -> tuple[NDArray[np.bool_], int, int, float]:
    """A character's 1-bit ink (drawn once by Pillow, then reused), the offset of the ink's
    top-left corner from the text origin, and how far the character advances the pen."""
    # Metrics of 1-bit rendering: its hinting gives other advances than anti-aliased text.
    left, top, right, bottom = (int(v) for v in font.getbbox(char, mode="1"))
    advance = float(font.getlength(char, mode="1"))
    if right <= left or bottom <= top:
        return np.zeros((0, 0), dtype=np.bool_), 0, 0, advance
    image = Image.new("L", (right - left, bottom - top), 0)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # palette indexes cannot be blended: no anti-aliasing
    draw.text((-left, -top), char, fill=255, font=font)
    ink = np.asarray(image) > 0
    ink.flags.writeable = False
    return ink, left, top, advance


def _draw_text(canvas: NDArray[np.uint8], x: int, y: int, text: str, font: Font) -> None:
    """Write text in the TEXT colour with its origin (top of the line) at x, y, clipped to the
    canvas. Glyphs are placed at their advances, without kerning: a pixel off at most, and no
    text layout per frame (a caption's time is new on every frame)."""
    height, width = canvas.shape
    pen = 0.0
    for char in text:
        ink, left, top, advance = _glyph(font, char)
        gx, gy = x + round(pen) + left, y + top
        pen += advance
        rows, cols = ink.shape
        top_cut, left_cut = max(0, -gy), max(0, -gx)
        bottom, right = min(rows, height - gy), min(cols, width - gx)
        if bottom > top_cut and right > left_cut:
            region = canvas[gy + top_cut : gy + bottom, gx + left_cut : gx + right]
            region[ink[top_cut:bottom, left_cut:right]] = TEXT


def _text_width(text: str, font: Font) -> int:
    """How wide `_draw_text` draws text: the sum of its glyphs' advances (no layout per frame)."""
    return round(sum(_glyph(font, char)[3] for char in text))


def encode_png(pixels: NDArray[np.uint8], palette: bytes) -> bytes:
    """An 8-bit palette image as PNG bytes (PNG spec: colour type 3, no filtering).

    Written here rather than by Pillow for speed: the deflate of ISA-L (isal) is about 6×
    faster than zlib's at the same size for these images, and it is most of the cost of a
    frame (BENCHMARKS.md, rendering)."""
    height, width = pixels.shape
    scanlines = np.zeros((height, width + 1), dtype=np.uint8)  # a 0 (no filter) byte per row
    scanlines[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"PLTE", palette),
            _chunk(b"IDAT", isal_zlib.compress(scanlines.data, PNG_COMPRESS_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))  # over type and data, without joining them first
    return b"".join((struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)))


@lru_cache(maxsize=16)
def _font(size: int) -> tuple[Font, int, int]:
    """Pillow's built-in font (no file is read) at a pixel size, the offset of the top of its
    tallest glyphs below the text origin, and the height of a line of text."""
    font = ImageFont.load_default(size=size)
    _, top, _, bottom = font.getbbox("Ag°", mode="1")
    return font, int(top), int(bottom - top)


def render_heatmap(
    grid: Grid,
    *,
    width: int = 640,
    height: int = 480,
    colormap: str = "inferno",
    vmin: float | None = None,
    vmax: float | None = None,
    caption: str | None = None,
    rotate: int = 0,
    flip_horizontal: bool = False,
    flip_vertical: bool = False,
    show_scale: bool = True,
    smooth: bool = True,
) -> bytes:
    """Render a temperature grid as a width × height PNG heatmap and return the PNG bytes.

    The grid is upscaled smoothly (bilinear) by default, or blocky (nearest neighbour) with
    `smooth=False`; cells keep their square shape either way and no-data pixels are hatched
    grey. The colour range is vmin..vmax, by default the real pixels' min..max.
    `rotate` turns the image clockwise (0, 90, 180 or 270 degrees); the flips then mirror the
    rotated image left-right (`flip_horizontal`) or top-bottom (`flip_vertical`). With
    `show_scale` a colour bar labelled with the max, middle and min in °C sits on the right;
    `caption` is one line of text at the top. Decorations are left out when the image is too
    small to hold them. Raises ValueError for a malformed grid or an unknown option.
    """
    if colormap not in LUTS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if rotate not in ROTATIONS:
        raise ValueError(f"rotate must be 0, 90, 180 or 270 degrees, got {rotate!r}")
    for name, side in (("width", width), ("height", height)):
        if not 1 <= side <= MAX_SIDE_PX:
            raise ValueError(f"{name} must be 1..{MAX_SIDE_PX} pixels, got {side!r}")
    array = _as_array(grid)
    lo, hi, known = _colour_range(array, vmin, vmax)
    oriented = _orient(array, rotate, flip_horizontal, flip_vertical)
    rows, cols = oriented.shape

    # Layout: caption line on top, heatmap, then scale bar and its labels on the right.
    font, ink_top, line_px = _font(max(8, min(width, height) // 30))
    pad = max(2, line_px // 2)
    labels = (_label(hi, known), _label((lo + hi) / 2, known), _label(lo, known))
    top = pad + (line_px + pad if caption else 0)
    bar_px = max(6, round(width * _SCALE_BAR_WIDTH_FRACTION))
    label_px = min(max(_text_width(text, font) for text in labels), width // 3)
    right = pad + (bar_px + pad + label_px + pad if show_scale else 0)
    area_w, area_h = width - pad - right, height - top - pad
    decorated = area_w >= _MIN_HEATMAP_PX and area_h >= _MIN_HEATMAP_PX
    left = pad if decorated else 0
    if not decorated:
        top, area_w, area_h = 0, width, height
    cell = min(area_w / cols, area_h / rows)
    map_w = min(area_w, max(1, round(cols * cell)))
    map_h = min(area_h, max(1, round(rows * cell)))
    x0 = left + (area_w - map_w) // 2
    y0 = top + (area_h - map_h) // 2
    bar_x = x0 + map_w + pad

    canvas = np.full((height, width), BACKGROUND, dtype=np.uint8)
    inner_h = min(map_h, max(rows, -(-map_h // SMOOTH_BLOCK_PX)))
    inner_w = min(map_w, max(cols, -(-map_w // SMOOTH_BLOCK_PX)))
    if smooth and (inner_h, inner_w) != (rows, cols):
        oriented = _smooth(oriented, inner_h, inner_w)
    heatmap = _upscale(_level_indexes(oriented, lo, hi), map_h, map_w)
    canvas[y0 : y0 + map_h, x0 : x0 + map_w] = heatmap
    if decorated and show_scale:
        gradient = np.rint(np.linspace(LEVELS - 1, 0, map_h)).astype(np.uint8)
        canvas[y0 : y0 + map_h, bar_x : bar_x + bar_px] = gradient[:, np.newaxis]

    if decorated and caption:
        one_line = caption.replace("\r", " ").replace("\n", " ")
        _draw_text(canvas, pad, pad - ink_top, one_line, font)
    if decorated and show_scale:
        # The bar's 1-pixel frame, then a tick and a label at the max, middle and min.
        x1, y1 = bar_x + bar_px, y0 + map_h
        canvas[y0 - 1, bar_x - 1 : x1 + 1] = TEXT
        canvas[y1, bar_x - 1 : x1 + 1] = TEXT
        canvas[y0 - 1 : y1 + 1, bar_x - 1] = TEXT
        canvas[y0 - 1 : y1 + 1, x1] = TEXT
        for text, fraction in zip(labels, (0.0, 0.5, 1.0), strict=True):
            centre = y0 + round(fraction * (map_h - 1))
            y = min(max(centre - line_px // 2, 0), height - line_px) - ink_top
            canvas[centre, x1 : x1 + pad // 2 + 1] = TEXT
            _draw_text(canvas, x1 + pad, y, text, font)
    return encode_png(canvas, _palette(colormap))
