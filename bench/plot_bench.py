#!/usr/bin/env python3
"""plot_bench.py - plot ds4cl-bench CSVs to a PNG, standard library only.

    python3 bench/plot_bench.py OUT.png A.csv [B.csv ...] [--title T]
    python3 bench/plot_bench.py --check FILE.png

Each CSV is one series, labelled by its file name without ".csv".  A CSV
is what ds4cl-bench --csv writes: a header naming at least ctx_tokens,
prefill_tps and gen_tps (the full set is ctx_tokens, prefill_tokens,
prefill_tps, gen_tokens, gen_tps, kvcache_bytes; extra columns are
ignored), then one row per context frontier.  The image has two panels,
prefill t/s and decode t/s against context tokens, each with axes from 0,
"nice" 1-2-5 ticks with numbers and a light grid; one legend under both.

Design: a bytearray RGB canvas with pixel, rectangle, line and text
primitives; text comes from the 5x7 bitmap font below (ASCII 32..126,
drawn at an integer scale, unknown characters as '?').  The PNG writer is
the minimal valid file: signature, IHDR (8-bit RGB), one zlib IDAT of rows
with filter byte 0, IEND, each chunk with its CRC-32.  The image is written
to OUT.png.tmp and renamed, so a failure leaves no partial file.

--check validates a PNG without trusting this writer: chunk CRCs, IHDR
fields, IEND last, the inflated size, every row's filter (all five filters
are undone), and prints "ok: WxH, N colours".

Errors (unreadable or malformed CSV, no rows, a value that is not a finite
number >= 0, an invalid PNG for --check) print one line
"plot_bench.py: ..." and exit 1; a bad command line exits 2.
"""
import argparse
import csv
import math
import os
import struct
import sys
import zlib

REQUIRED = ("ctx_tokens", "prefill_tps", "gen_tps")

# --------------------------------------------------------------- font ---
# 5x7 glyphs, rows top to bottom, '#' = ink.
FONT_ROWS = {
    " ": "..... ..... ..... ..... ..... ..... .....",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    '"': ".#.#. .#.#. ..... ..... ..... ..... .....",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    "$": "..#.. .#### #.#.. .###. ..#.# ####. ..#..",
    "%": "##..# ##.#. ...#. ..#.. .#... .#.## #..##",
    "&": ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",
    "'": "..#.. ..#.. ..... ..... ..... ..... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    "-": "..... ..... ..... ##### ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    "/": "....# ...#. ...#. ..#.. .#... .#... #....",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    ";": "..... .##.. .##.. ..... .##.. ..#.. .#...",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    "=": "..... ..... ##### ..... ##### ..... .....",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "@": ".###. #...# ....# .##.# #.#.# #.#.# .###.",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "\\": "#.... .#... .#... ..#.. ...#. ...#. ....#",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "^": "..#.. .#.#. #...# ..... ..... ..... .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "`": ".#... ..#.. ..... ..... ..... ..... .....",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... #.##. ##..# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.",
    "d": "....# ....# .##.# #..## #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... .#### #...# #...# .#### ....# .###.",
    "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #...# #...#",
    "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# #...# ####. #....",
    "q": "..... ..... .#### #...# #...# .#### ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .###. #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
    "{": "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "}": ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...",
    "~": "..... ..... .#... #.#.# ...#. ..... .....",
}
GLYPH_W, GLYPH_H = 5, 7


def _build_font():
    """Each glyph as a list of (x, y) ink pixels; checks the table's shape."""
    font = {}
    for ch, text in FONT_ROWS.items():
        rows = text.split()
        assert len(rows) == GLYPH_H and all(len(r) == GLYPH_W for r in rows), ch
        font[ch] = [(x, y) for y, r in enumerate(rows) for x, c in enumerate(r) if c == "#"]
    return font


FONT = _build_font()

# Colours.
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID = (225, 225, 225)
PALETTE = [(31, 119, 180), (230, 110, 0), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (110, 110, 110), (170, 170, 30), (23, 170, 190)]


class PlotError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# ------------------------------------------------------------- canvas ---
class Canvas:
    def __init__(self, w, h, bg=WHITE):
        self.w, self.h = w, h
        self.px = bytearray(bytes(bg) * (w * h))

    def set(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            i = 3 * (y * self.w + x)
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0, y0, x1, y1, c):
        """Filled rectangle, corners inclusive, clipped to the canvas."""
        x0, x1 = max(0, min(x0, x1)), min(self.w - 1, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.h - 1, max(y0, y1))
        if x0 > x1 or y0 > y1:
            return
        run = bytes(c) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            i = 3 * (y * self.w + x0)
            self.px[i:i + len(run)] = run

    def line(self, x0, y0, x1, y1, c, width=1):
        """Bresenham line; width > 1 draws it as a width x width brush."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            if width == 1:
                self.set(x0, y0, c)
            else:
                self.rect(x0, y0, x0 + width - 1, y0 + width - 1, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x, y, s, c, scale=2):
        """Draw s with its top-left corner at (x, y)."""
        for i, ch in enumerate(s):
            ox = x + i * (GLYPH_W + 1) * scale
            for gx, gy in FONT.get(ch, FONT["?"]):
                self.rect(ox + gx * scale, y + gy * scale, ox + gx * scale + scale - 1,
                          y + gy * scale + scale - 1, c)


def text_width(s, scale=2):
    return max(0, len(s) * (GLYPH_W + 1) * scale - scale)


# ---------------------------------------------------------------- png ---
def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(cv):
    stride = 3 * cv.w
    raw = b"".join(b"\x00" + bytes(cv.px[y * stride:(y + 1) * stride]) for y in range(cv.h))
    ihdr = struct.pack(">IIBBBBB", cv.w, cv.h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) +
            _chunk(b"IEND", b""))


def write_png(path, cv):
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(png_bytes(cv))
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise PlotError("cannot write %s: %s" % (path, e.strerror or e))


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def check_png(path):
    """Validate the PNG at path; returns (width, height, colours)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PlotError("%s: %s" % (path, e.strerror or e))
    bad = lambda why: PlotError("%s: not a valid PNG: %s" % (path, why))  # noqa: E731
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise bad("bad signature")
    pos, chunks = 8, []
    while pos < len(data):
        if pos + 12 > len(data):
            raise bad("truncated chunk at byte %d" % pos)
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if len(body) != n or pos + 12 + n > len(data):
            raise bad("truncated %r chunk" % kind)
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        if crc != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise bad("CRC mismatch in %s chunk" % kind.decode("latin-1"))
        chunks.append((kind, body))
        pos += 12 + n
        if kind == b"IEND":
            break
    if pos != len(data):
        raise bad("bytes after IEND")
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise bad("first chunk is not a 13-byte IHDR")
    if chunks[-1][0] != b"IEND":
        raise bad("no IEND chunk")
    w, h, depth, ctype, comp, filt, inter = struct.unpack(">IIBBBBB", chunks[0][1])
    bpp = {0: 1, 2: 3, 6: 4}.get(ctype)
    if w == 0 or h == 0 or depth != 8 or bpp is None or comp or filt or inter:
        raise bad("unsupported IHDR (%dx%d depth %d colour type %d)" % (w, h, depth, ctype))
    try:
        raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    except zlib.error as e:
        raise bad("IDAT does not inflate: %s" % e)
    stride = w * bpp
    if len(raw) != h * (stride + 1):
        raise bad("image data is %d bytes, want %d" % (len(raw), h * (stride + 1)))
    colours, prev = set(), bytearray(stride)
    for y in range(h):
        ftype, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ftype > 4:
            raise bad("row %d has filter type %d" % (y, ftype))
        if ftype:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[ftype]
                row[i] = (row[i] + pred) & 0xFF
        colours.update(zip(*(row[k::bpp] for k in range(bpp))))
        prev = row
    return w, h, len(colours)


# ---------------------------------------------------------------- csv ---
def _number(path, line, col, text):
    try:
        v = float(text)
    except ValueError:
        raise PlotError("%s:%d: %s is not a number: %r" % (path, line, col, text))
    if not math.isfinite(v) or v < 0:
        raise PlotError("%s:%d: %s must be a finite number >= 0, not %r" % (path, line, col, text))
    return v


def read_series(path):
    """[(ctx, prefill_tps, gen_tps)] sorted by ctx, from a ds4cl-bench CSV."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PlotError("%s: %s" % (path, getattr(e, "strerror", None) or e))
    rows = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
    if not rows:
        raise PlotError("%s: empty file (want a ds4cl-bench CSV)" % path)
    head = [c.strip() for c in rows[0][1]]
    missing = [c for c in REQUIRED if c not in head]
    if missing:
        raise PlotError("%s:%d: header lacks %s (want a ds4cl-bench CSV: %s)" %
                        (path, rows[0][0], ", ".join(missing), ",".join(REQUIRED)))
    idx = {c: head.index(c) for c in REQUIRED}
    points = []
    for line, r in rows[1:]:
        if len(r) != len(head):
            raise PlotError("%s:%d: %d fields, the header has %d" % (path, line, len(r), len(head)))
        points.append(tuple(_number(path, line, c, r[idx[c]].strip()) for c in REQUIRED))
    if not points:
        raise PlotError("%s: no data rows" % path)
    return sorted(points)


# --------------------------------------------------------------- plot ---
def nice_ticks(vmax, n=5):
    """Ticks 0, s, 2s, ... covering vmax with s = 1, 2 or 5 x 10^k."""
    if vmax <= 0:
        vmax = 1.0
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    count = int(math.ceil(vmax / step - 1e-9))
    return [i * step for i in range(count + 1)], step


def tick_label(v, step):
    if step >= 1:
        iv = int(round(v))
        if iv >= 10000 and iv % 1000 == 0:
            return "%dk" % (iv // 1000)
        return str(iv)
    digits = max(1, int(math.ceil(-math.log10(step) - 1e-9)))
    return "%.*f" % (digits, v)


def draw_panel(cv, box, title, series, col):
    """One panel: series[i] = (label, colour, points); col 1 or 2 picks
    prefill_tps or gen_tps against ctx (column 0)."""
    x0, y0, x1, y1 = box
    xt, xs = nice_ticks(max(p[0] for _, _, pts in series for p in pts))
    yt, ys = nice_ticks(max(p[col] for _, _, pts in series for p in pts))
    ylabels = [tick_label(v, ys) for v in yt]
    left = x0 + max(text_width(s) for s in ylabels) + 16
    right, top, bottom = x1 - 16, y0 + 34, y1 - 56
    sx = lambda v: left + int(round(v / xt[-1] * (right - left)))  # noqa: E731
    sy = lambda v: bottom - int(round(v / yt[-1] * (bottom - top)))  # noqa: E731
    for v, s in zip(yt, ylabels):
        y = sy(v)
        cv.line(left, y, right, y, GRID)
        cv.line(left - 5, y, left, y, BLACK)
        cv.text(left - 8 - text_width(s), y - GLYPH_H, s, BLACK)
    for v in xt:
        x, s = sx(v), tick_label(v, xs)
        cv.line(x, top, x, bottom, GRID)
        cv.line(x, bottom, x, bottom + 5, BLACK)
        cv.text(x - text_width(s) // 2, bottom + 10, s, BLACK)
    cv.line(left, top, left, bottom, BLACK, 2)
    cv.line(left, bottom, right, bottom, BLACK, 2)
    cv.text((left + right - text_width(title)) // 2, y0 + 6, title, BLACK)
    xlabel = "context (tokens)"
    cv.text((left + right - text_width(xlabel)) // 2, bottom + 34, xlabel, BLACK)
    for _, colour, pts in series:
        xy = [(sx(p[0]), sy(p[col])) for p in pts]
        for (ax, ay), (bx, by) in zip(xy, xy[1:]):
            cv.line(ax, ay, bx, by, colour, 2)
        for x, y in xy:
            cv.rect(x - 3, y - 3, x + 3, y + 3, colour)


def legend_rows(labels, width):
    """Wrap legend entries (swatch + label) into rows that fit width."""
    rows, cur, used = [], [], 0
    for i, s in enumerate(labels):
        w = 30 + text_width(s) + 28
        if cur and used + w > width:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += w
    if cur:
        rows.append(cur)
    return rows


def render(series, title):
    W, PANEL_H, MARGIN = 1400, 500, 20
    labels = [s[0] for s in series]
    lrows = legend_rows(labels, W - 2 * MARGIN)
    top = MARGIN + (7 * 3 + 16 if title else 0)
    H = top + PANEL_H + 12 + 26 * len(lrows) + MARGIN
    cv = Canvas(W, H)
    if title:
        cv.text((W - text_width(title, 3)) // 2, MARGIN, title, BLACK, 3)
    half = (W - 2 * MARGIN) // 2
    draw_panel(cv, (MARGIN, top, MARGIN + half, top + PANEL_H), "prefill t/s", series, 1)
    draw_panel(cv, (MARGIN + half, top, W - MARGIN, top + PANEL_H), "decode t/s", series, 2)
    y = top + PANEL_H + 12
    for row in lrows:
        x = MARGIN + 40
        for i in row:
            cv.rect(x, y + 2, x + 21, y + 11, series[i][1])
            cv.text(x + 30, y, labels[i], BLACK)
            x += 30 + text_width(labels[i]) + 28
        y += 26
    return cv


def series_label(path):
    base = os.path.basename(path)
    return base[:-4] if base.lower().endswith(".csv") else base


def main(argv):
    ap = argparse.ArgumentParser(prog="plot_bench.py",
                                 description="Plot ds4cl-bench CSVs (prefill and decode t/s vs context) to a PNG.")
    ap.add_argument("out", nargs="?", help="output PNG")
    ap.add_argument("csvs", nargs="*", help="ds4cl-bench CSV files, one series each")
    ap.add_argument("--title", default="", help="title above the panels")
    ap.add_argument("--check", metavar="PNG", help="validate a PNG file and print its size")
    a = ap.parse_args(argv)
    try:
        if a.check:
            if a.out or a.csvs:
                ap.error("--check takes no other arguments")
            w, h, n = check_png(a.check)
            print("ok: %dx%d, %d colours" % (w, h, n))
            return 0
        if not a.out or not a.csvs:
            ap.error("want OUT.png and at least one CSV")
        if a.out.lower().endswith(".csv"):
            ap.error("the first argument is the output PNG, not a CSV: %s" % a.out)
        series = [(series_label(p), PALETTE[i % len(PALETTE)], read_series(p)) for i, p in enumerate(a.csvs)]
        write_png(a.out, render(series, a.title))
        return 0
    except PlotError as e:
        print("plot_bench.py: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
