"""imaging.heatmap: decoded PNGs sampled pixel by pixel, exact statistics, property tests."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw

from imaging.colormaps import LUTS
from imaging.heatmap import (
    COLORMAPS,
    MAX_BINS,
    NO_DATA_HATCH_RGB,
    NO_DATA_RGB,
    SMOOTH_BLOCK_PX,
    TEXT,
    _draw_text,
    _font,
    encode_png,
    grid_stats,
    histogram,
    render_heatmap,
)
from imaging.heatmap import Grid as HeatmapGrid

Cell = float | None
Grid = list[list[Cell]]
RGB = tuple[int, int, int]


def flat(value: Cell, rows: int = 24, cols: int = 32) -> Grid:
    """A rows × cols grid with every pixel set to value."""
    return [[value] * cols for _ in range(rows)]


def decode(png: bytes) -> Image.Image:
    """The PNG as an RGB image, after checking it is one."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    return image.convert("RGB")


def heatmap_box(image: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box of everything that is not background (render with no scale or caption)."""
    background = Image.new("RGB", image.size, image.getpixel((0, 0)))
    box = ImageChops.difference(image, background).getbbox()
    assert box is not None
    return box


def cell_colour(image: Image.Image, rows: int, cols: int, row: int, col: int) -> RGB:
    """Colour at the centre of one displayed cell of a rows × cols heatmap."""
    left, top, right, bottom = heatmap_box(image)
    x = left + int((col + 0.5) * (right - left) / cols)
    y = top + int((row + 0.5) * (bottom - top) / rows)
    pixel = image.getpixel((x, y))
    assert isinstance(pixel, tuple)
    return (pixel[0], pixel[1], pixel[2])


def colours(image: Image.Image) -> set[RGB]:
    """Every distinct colour in the image."""
    found = image.getcolors(maxcolors=image.width * image.height)
    assert found is not None
    return {(c[0], c[1], c[2]) for _, c in found if isinstance(c, tuple)}


def plain(grid: HeatmapGrid, **options: Any) -> Image.Image:
    """Render with neither scale bar nor caption, so only the heatmap differs from background."""
    return decode(render_heatmap(grid, show_scale=False, **options))


def blocky(grid: HeatmapGrid, **options: Any) -> Image.Image:
    """`plain`, nearest-neighbour: every displayed cell is one flat colour."""
    return plain(grid, smooth=False, **options)


# --- size and colours --------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(640, 480), (320, 240), (800, 200), (100, 300)])
def test_png_has_the_requested_size(width: int, height: int) -> None:
    grid = [[20.0 + r + c / 10 for c in range(32)] for r in range(24)]
    image = decode(render_heatmap(grid, width=width, height=height, caption="node1"))
    assert image.size == (width, height)


def test_default_size_is_640_by_480() -> None:
    assert decode(render_heatmap(flat(21.0))).size == (640, 480)


@pytest.mark.parametrize("colormap", COLORMAPS)
def test_hottest_pixel_takes_the_top_colour_and_coldest_the_bottom(colormap: str) -> None:
    grid = flat(20.0)
    grid[5][7] = 40.0
    grid[20][30] = 10.0
    image = blocky(grid, colormap=colormap)
    assert cell_colour(image, 24, 32, 5, 7) == LUTS[colormap][255]
    assert cell_colour(image, 24, 32, 20, 30) == LUTS[colormap][0]


def test_warmer_pixels_sit_higher_on_the_colormap() -> None:
    lut = LUTS["gray"]  # grey levels grow with temperature, so brightness orders them
    grid: Grid = [[float(c) for c in range(8)] for _ in range(6)]
    image = blocky(grid, colormap="gray")
    shades = [cell_colour(image, 6, 8, 0, c)[0] for c in range(8)]
    assert shades == sorted(shades) and shades[0] == lut[0][0] and shades[-1] == lut[255][0]


def test_vmin_vmax_clip_the_colour_range() -> None:
    grid = flat(25.0)
    grid[0][0], grid[0][1] = -100.0, 100.0
    image = blocky(grid, vmin=20.0, vmax=30.0)
    assert cell_colour(image, 24, 32, 0, 0) == LUTS["inferno"][0]
    assert cell_colour(image, 24, 32, 0, 1) == LUTS["inferno"][255]
    middle = cell_colour(image, 24, 32, 10, 10)
    assert middle in LUTS["inferno"][120:136]


def test_no_data_pixels_are_hatched_grey() -> None:
    grid = flat(30.0)
    grid[4][4] = None
    grid[4][5] = 10.0
    image = blocky(grid)
    left, top, right, bottom = heatmap_box(image)
    cell_w, cell_h = (right - left) / 32, (bottom - top) / 24
    inside = {
        image.getpixel((int(left + (4 + fx) * cell_w), int(top + (4 + fy) * cell_h)))
        for fx in (0.2, 0.35, 0.5, 0.65, 0.8)
        for fy in (0.2, 0.35, 0.5, 0.65, 0.8)
    }
    assert inside == {NO_DATA_RGB, NO_DATA_HATCH_RGB}
    assert all(r == g == b for r, g, b in (NO_DATA_RGB, NO_DATA_HATCH_RGB))
    assert NO_DATA_RGB not in LUTS["inferno"] and NO_DATA_HATCH_RGB not in LUTS["inferno"]


@pytest.mark.parametrize("smooth", [True, False])
def test_a_missing_row_of_a_partial_frame_is_drawn_as_no_data(smooth: bool) -> None:
    grid = flat(22.0)
    grid[10] = [None] * 32
    image = plain(grid, smooth=smooth)
    row = {cell_colour(image, 24, 32, 10, c) for c in range(32)}
    assert row <= {NO_DATA_RGB, NO_DATA_HATCH_RGB}
    assert cell_colour(image, 24, 32, 9, 0) not in (NO_DATA_RGB, NO_DATA_HATCH_RGB)


# --- orientation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rotate", "flip_horizontal", "flip_vertical", "corner"),
    [
        (0, False, False, "top_left"),
        (90, False, False, "top_right"),
        (180, False, False, "bottom_right"),
        (270, False, False, "bottom_left"),
        (0, True, False, "top_right"),
        (0, False, True, "bottom_left"),
        (0, True, True, "bottom_right"),
        (90, True, False, "top_left"),
        (270, False, True, "top_left"),
    ],
)
@pytest.mark.parametrize("smooth", [True, False])
def test_rotation_and_flips_move_the_hot_corner(
    rotate: int, flip_horizontal: bool, flip_vertical: bool, corner: str, smooth: bool
) -> None:
    grid = flat(20.0)
    grid[0][0] = 60.0
    image = plain(
        grid,
        colormap="gray",  # brightness orders temperatures
        smooth=smooth,
        rotate=rotate,
        flip_horizontal=flip_horizontal,
        flip_vertical=flip_vertical,
    )
    rows, cols = (32, 24) if rotate in (90, 270) else (24, 32)
    corners = {
        "top_left": (0, 0),
        "top_right": (0, cols - 1),
        "bottom_left": (rows - 1, 0),
        "bottom_right": (rows - 1, cols - 1),
    }
    shade = {name: cell_colour(image, rows, cols, r, c)[0] for name, (r, c) in corners.items()}
    hottest = max(shade, key=lambda name: shade[name])
    assert hottest == corner
    assert all(shade[name] < shade[corner] for name in shade if name != corner)


# --- smooth upscaling --------------------------------------------------------------------


def test_smooth_upscaling_draws_a_gradient_between_cells() -> None:
    # Two cells, cold and hot: blocky shows two colours, smooth a ramp from one to the other.
    grid: Grid = [[10.0, 20.0]]
    image = plain(grid, colormap="gray", width=200, height=100)
    left, top, right, bottom = heatmap_box(image)
    row = np.asarray(image.convert("L"))[(top + bottom) // 2, left:right]
    assert list(row) == sorted(row), "the ramp rises from the cold cell to the hot one"
    assert len(set(row.tolist())) > 20, "smooth means many levels, not two blocks"
    blocky_row = np.asarray(blocky(grid, colormap="gray", width=200, height=100).convert("L"))
    assert len(set(blocky_row[(top + bottom) // 2, left:right].tolist())) == 2


def test_smooth_keeps_the_hot_spot_where_it_is_and_near_the_top_colour() -> None:
    grid = flat(20.0)
    grid[5][7] = 40.0
    image = plain(grid, colormap="gray")
    lut = LUTS["gray"]
    hot = cell_colour(image, 24, 32, 5, 7)[0]
    assert hot >= lut[int(255 * 0.85)][0], "the hot cell's centre is close to the top colour"
    left, top, right, bottom = heatmap_box(image)
    region = np.asarray(image.crop((left, top, right, bottom)).convert("L"))
    y, x = np.unravel_index(int(region.argmax()), region.shape)
    assert int(x * 32 / region.shape[1]) == 7 and int(y * 24 / region.shape[0]) == 5


def test_smooth_no_data_does_not_bleed_into_real_pixels() -> None:
    # A no-data row between two flat real rows: the real rows keep their exact colour right up
    # to the hatched band, so a missing row never drags its neighbours' temperatures to zero.
    grid = flat(30.0)
    grid[0][0] = 10.0  # sets a colour range; far from the missing row
    grid[12] = [None] * 32
    image = plain(grid, colormap="gray")
    lut = LUTS["gray"]
    left, top, right, bottom = heatmap_box(image)
    cell_h = (bottom - top) / 24
    x = left + (right - left) // 2
    above = image.getpixel((x, int(top + 11.4 * cell_h)))
    below = image.getpixel((x, int(top + 13.6 * cell_h)))
    assert above == below == lut[255]
    column = [image.getpixel((x, y)) for y in range(top, bottom)]
    hatched = [y for y, rgb in enumerate(column) if rgb in (NO_DATA_RGB, NO_DATA_HATCH_RGB)]
    assert hatched == list(range(hatched[0], hatched[-1] + 1)), "one unbroken band"
    assert abs(len(hatched) - cell_h) <= SMOOTH_BLOCK_PX, "as tall as the missing row"
    assert abs(hatched[0] - 12 * cell_h) <= SMOOTH_BLOCK_PX, "where the missing row was"


def test_quarter_turn_keeps_cells_square() -> None:
    image = plain(flat(20.0), rotate=90)
    left, top, right, bottom = heatmap_box(image)
    assert (right - left) / (bottom - top) == pytest.approx(24 / 32, abs=0.02)


# --- decorations -------------------------------------------------------------------------


def test_scale_bar_is_drawn_only_when_asked() -> None:
    # A flat grid shows one mid colour: the colormap's ends can only come from the scale bar.
    lut = LUTS["viridis"]
    with_scale = colours(decode(render_heatmap(flat(25.0), colormap="viridis")))
    without = colours(decode(render_heatmap(flat(25.0), colormap="viridis", show_scale=False)))
    assert {lut[0], lut[255]} <= with_scale
    assert lut[0] not in without and lut[255] not in without


def test_scale_bar_has_the_hottest_colour_on_top() -> None:
    lut = LUTS["viridis"]
    pixels = np.asarray(decode(render_heatmap(flat(25.0), colormap="viridis")))
    hottest_rows = np.nonzero((pixels == lut[255]).all(axis=2))[0]
    coldest_rows = np.nonzero((pixels == lut[0]).all(axis=2))[0]
    assert hottest_rows.max() < coldest_rows.min()


def test_caption_is_drawn_at_the_top_left() -> None:
    # A quarter-turned grid is taller than wide, so the heatmap leaves the left margin free.
    caption = "node1  2024-05-01T12:00:00Z  partial 50%"
    with_caption = decode(render_heatmap(flat(25.0), caption=caption, rotate=90, show_scale=False))
    without = decode(render_heatmap(flat(25.0), rotate=90, show_scale=False))
    corner = (0, 0, heatmap_box(without)[0], 40)
    assert len(colours(with_caption.crop(corner))) > 1
    assert len(colours(without.crop(corner))) == 1


def test_a_tiny_image_still_renders_without_decorations() -> None:
    for width, height in ((1, 1), (12, 9), (40, 30)):
        image = decode(render_heatmap(flat(25.0), width=width, height=height, caption="x"))
        assert image.size == (width, height)


def test_rendering_is_deterministic() -> None:
    grid = [[float(r * c) for c in range(32)] for r in range(24)]
    assert render_heatmap(grid, caption="a") == render_heatmap(grid, caption="a")


# --- odd grids ---------------------------------------------------------------------------


def test_flat_grid_renders_in_the_middle_colour() -> None:
    image = plain(flat(25.0))
    assert cell_colour(image, 24, 32, 12, 16) in LUTS["inferno"][120:136]


@pytest.mark.parametrize("options", [{}, {"vmin": 10.0, "vmax": 40.0}, {"vmin": 10.0}])
def test_all_none_grid_renders_as_no_data(options: dict[str, Any]) -> None:
    image = plain(flat(None), **options)
    assert colours(image.crop(heatmap_box(image))) == {NO_DATA_RGB, NO_DATA_HATCH_RGB}
    assert decode(render_heatmap(flat(None), **options)).size == (640, 480)


def test_fast_mode_6_by_8_renders_with_its_aspect() -> None:
    grid: Grid = [[20.0 + r + c for c in range(8)] for r in range(6)]
    image = plain(grid)
    left, top, right, bottom = heatmap_box(image)
    assert (right - left) / (bottom - top) == pytest.approx(8 / 6, abs=0.02)
    assert cell_colour(image, 6, 8, 5, 7) == LUTS["inferno"][255]
    assert cell_colour(image, 6, 8, 0, 0) == LUTS["inferno"][0]


def test_single_pixel_grid_renders() -> None:
    assert decode(render_heatmap([[21.5]])).size == (640, 480)


def test_tuples_and_nan_are_accepted() -> None:
    grid = ((20.0, float("nan")), (None, 30.0))
    image = plain(grid)
    assert cell_colour(image, 2, 2, 0, 1) in (NO_DATA_RGB, NO_DATA_HATCH_RGB)
    assert grid_stats(grid) == (20.0, 30.0, 25.0)


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([], "grid is empty"),
        ([[]], "grid is empty"),
        ([[1.0, 2.0], [3.0]], "row 1 has 1 values, row 0 has 2"),
        ([[1.0], [2.0, 3.0]], "row 1 has 2 values, row 0 has 1"),
    ],
)
def test_malformed_grids_are_refused(grid: Grid, message: str) -> None:
    for function in (render_heatmap, grid_stats, histogram):
        with pytest.raises(ValueError, match=message):
            function(grid)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rotate": 45}, "rotate must be 0, 90, 180 or 270"),
        ({"rotate": 360}, "rotate must be 0, 90, 180 or 270"),
        ({"colormap": "rainbow"}, "unknown colormap 'rainbow'; choose one of inferno"),
        ({"vmin": 30.0, "vmax": 20.0}, "vmin must be below vmax"),
        ({"vmin": 20.0, "vmax": 20.0}, "vmin must be below vmax"),
        ({"vmax": float("inf")}, "vmax must be a finite number"),
        ({"width": 0}, "width must be"),
        ({"height": 100_000}, "height must be"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_heatmap(flat(20.0), **options)


def test_colormaps_include_the_documented_names() -> None:
    assert {"inferno", "viridis", "plasma", "magma", "jet", "gray"} <= set(COLORMAPS)
    assert all(len(LUTS[name]) == 256 for name in COLORMAPS)


# --- statistics --------------------------------------------------------------------------


def test_grid_stats_are_min_max_mean_of_real_pixels() -> None:
    assert grid_stats([[20.0, None], [21.5, 30.1]]) == (20.0, 30.1, 23.9)
    assert grid_stats([[-12.5, -204.7], [204.7, None]]) == (-204.7, 204.7, -4.2)


def test_grid_stats_of_no_data_is_none() -> None:
    assert grid_stats(flat(None, 6, 8)) is None


def test_histogram_has_equal_width_bins() -> None:
    grid: Grid = [[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, None]]
    assert histogram(grid, bins=4) == [
        {"lo": 0.0, "hi": 2.0, "count": 2},
        {"lo": 2.0, "hi": 4.0, "count": 2},
        {"lo": 4.0, "hi": 6.0, "count": 2},
        {"lo": 6.0, "hi": 8.0, "count": 3},
    ]


def test_histogram_rounds_edges_to_one_decimal() -> None:
    assert histogram([[20.0, 21.0, 20.5]], bins=3) == [
        {"lo": 20.0, "hi": 20.3, "count": 1},
        {"lo": 20.3, "hi": 20.7, "count": 1},
        {"lo": 20.7, "hi": 21.0, "count": 1},
    ]


def test_histogram_defaults_to_twenty_bins() -> None:
    grid = [[float(r * 32 + c) for c in range(32)] for r in range(24)]
    bins = histogram(grid)
    assert len(bins) == 20 and sum(b["count"] for b in bins) == 768
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 767.0


def test_histogram_of_flat_grid_is_one_bin() -> None:
    grid = flat(25.0, 6, 8)
    grid[0][0] = None
    assert histogram(grid, bins=10) == [{"lo": 25.0, "hi": 25.0, "count": 47}]


def test_histogram_of_no_data_is_empty() -> None:
    assert histogram(flat(None), bins=5) == []


@pytest.mark.parametrize("bins", [0, -1, MAX_BINS + 1, True])
def test_histogram_refuses_bad_bin_counts(bins: int) -> None:
    with pytest.raises(ValueError, match=f"bins must be an integer from 1 to {MAX_BINS}"):
        histogram(flat(20.0), bins=bins)


def test_histogram_accepts_the_bin_limits() -> None:
    grid = [[float(v) for v in range(10)]]
    assert len(histogram(grid, bins=1)) == 1
    assert len(histogram(grid, bins=MAX_BINS)) == MAX_BINS


# --- properties --------------------------------------------------------------------------

temperatures = st.one_of(
    st.none(),
    st.floats(min_value=-204.7, max_value=204.7),
    st.sampled_from([-204.7, 204.7, 0.0, -0.1]),
)


@st.composite
def grids(draw: st.DrawFn) -> Grid:
    """Random rows × cols grids (up to the slow-mode size) with no-data and extreme pixels."""
    rows = draw(st.integers(min_value=1, max_value=24))
    cols = draw(st.integers(min_value=1, max_value=32))
    return [draw(st.lists(temperatures, min_size=cols, max_size=cols)) for _ in range(rows)]


@settings(deadline=None, max_examples=60)
@given(
    grid=grids(),
    width=st.integers(min_value=1, max_value=400),
    height=st.integers(min_value=1, max_value=300),
    colormap=st.sampled_from(COLORMAPS),
    rotate=st.sampled_from([0, 90, 180, 270]),
    flip_horizontal=st.booleans(),
    flip_vertical=st.booleans(),
    show_scale=st.booleans(),
    caption=st.one_of(st.none(), st.text(max_size=40)),
)
def test_render_never_fails_and_has_the_requested_size(
    grid: Grid,
    width: int,
    height: int,
    colormap: str,
    rotate: int,
    flip_horizontal: bool,
    flip_vertical: bool,
    show_scale: bool,
    caption: str | None,
) -> None:
    png = render_heatmap(
        grid,
        width=width,
        height=height,
        colormap=colormap,
        rotate=rotate,
        flip_horizontal=flip_horizontal,
        flip_vertical=flip_vertical,
        show_scale=show_scale,
        caption=caption,
    )
    assert decode(png).size == (width, height)


@settings(deadline=None)
@given(grid=grids(), bins=st.integers(min_value=1, max_value=MAX_BINS))
def test_histogram_counts_every_real_pixel_once(grid: Grid, bins: int) -> None:
    real = [v for row in grid for v in row if v is not None]
    result = histogram(grid, bins=bins)
    assert sum(b["count"] for b in result) == len(real)
    if real:
        assert result[0]["lo"] == round(min(real), 1) and result[-1]["hi"] == round(max(real), 1)
        assert all(b["lo"] <= b["hi"] for b in result)
    else:
        assert result == []


@settings(deadline=None)
@given(grid=grids())
def test_grid_stats_are_ordered(grid: Grid) -> None:
    stats = grid_stats(grid)
    if all(v is None for row in grid for v in row):
        assert stats is None
    else:
        assert stats is not None
        low, high, mean = stats
        assert low <= mean <= high


@settings(deadline=None, max_examples=80)
@given(
    pixels=st.integers(min_value=1, max_value=40).flatmap(
        lambda width: st.lists(
            st.lists(st.integers(0, 255), min_size=width, max_size=width), min_size=1, max_size=30
        )
    ),
    palette=st.binary(min_size=768, max_size=768),
)
def test_encode_png_round_trips_through_pillow(pixels: list[list[int]], palette: bytes) -> None:
    array = np.array(pixels, dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_png(array, palette)))
    image.load()  # checks every chunk's CRC and the deflate stream
    assert image.mode == "P"
    assert np.array_equal(np.asarray(image), array)
    assert bytes(image.getpalette() or []) == palette


@pytest.mark.parametrize("size", [8, 16, 21])
@pytest.mark.parametrize("text", ["node-7  2026-11-24T02:33:21Z  partial 96%", "-12.5 °C"])
def test_text_from_cached_glyphs_matches_pillows_own(size: int, text: str) -> None:
    font, _, line_px = _font(size)
    ours = np.zeros((line_px * 3, size * len(text)), dtype=np.uint8)
    _draw_text(ours, 4, 4, text, font)
    image = Image.new("P", (ours.shape[1], ours.shape[0]), 0)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    draw.text((4, 4), text, fill=TEXT, font=font)
    theirs = np.asarray(image)
    ink, reference = np.argwhere(ours == TEXT), np.argwhere(theirs == TEXT)
    # Glyphs are placed without kerning: the same ink, shifted by at most a pixel or two.
    assert abs(len(ink) - len(reference)) <= 0.03 * len(reference)
    assert np.abs(ink.min(axis=0) - reference.min(axis=0)).max() <= 1
    assert np.abs(ink.max(axis=0) - reference.max(axis=0)).max() <= 2


def test_text_running_off_the_canvas_is_clipped() -> None:
    font, _, _ = _font(16)
    canvas = np.zeros((10, 30), dtype=np.uint8)
    for x, y in [(-15, -8), (20, 5), (-100, 0), (0, 50)]:
        _draw_text(canvas, x, y, "88.8 °C", font)
    assert (canvas == TEXT).any()
