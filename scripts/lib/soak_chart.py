#!/usr/bin/env python3
"""Draws the soak's samples (scripts/soak) as an SVG chart, with no
third-party package: four panels over time (client RSS, open connections,
errors so far, p99 latency), and prints a one-line summary.

    python3 scripts/lib/soak_chart.py samples.csv chart.svg
"""

import csv
import sys

PANELS = [
    ("rss_kib", "client RSS (MiB)", lambda v: v / 1024),
    ("open_connections", "open connections", lambda v: v),
    ("errors", "errors so far", lambda v: v),
    ("p99_ms", "p99 latency (ms)", lambda v: v),
]
WIDTH, PANEL_HEIGHT, MARGIN = 720, 130, 50


def main(samples_path, svg_path):
    with open(samples_path) as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows:
        sys.exit(f"{samples_path}: no samples")
    end = max(r["seconds"] for r in rows) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{len(PANELS) * (PANEL_HEIGHT + 30) + 20}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for i, (key, title, scale) in enumerate(PANELS):
        top = 20 + i * (PANEL_HEIGHT + 30)
        values = [scale(r[key]) for r in rows]
        high = max(values) or 1
        plot_w = WIDTH - 2 * MARGIN
        points = " ".join(
            f"{MARGIN + plot_w * r['seconds'] / end:.1f},"
            f"{top + PANEL_HEIGHT - PANEL_HEIGHT * v / high:.1f}"
            for r, v in zip(rows, values)
        )
        parts += [
            f'<text x="{MARGIN}" y="{top - 5}" font-weight="bold">{title}</text>',
            f'<rect x="{MARGIN}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" '
            'fill="none" stroke="#ccc"/>',
            f'<text x="{MARGIN - 5}" y="{top + 10}" text-anchor="end">{high:.4g}</text>',
            f'<text x="{MARGIN - 5}" y="{top + PANEL_HEIGHT}" text-anchor="end">0</text>',
            f'<polyline points="{points}" fill="none" stroke="#2a6fb0" stroke-width="1.5"/>',
        ]
    parts.append(
        f'<text x="{WIDTH - MARGIN}" y="{len(PANELS) * (PANEL_HEIGHT + 30) + 12}" '
        f'text-anchor="end">seconds (0 to {end:.0f})</text>'
    )
    parts.append("</svg>")
    with open(svg_path, "w") as f:
        f.write("\n".join(parts) + "\n")
    first, last = rows[0], rows[-1]
    print(
        f"samples {len(rows)} over {end:.0f}s; RSS {first['rss_kib'] / 1024:.1f} -> "
        f"{last['rss_kib'] / 1024:.1f} MiB; open connections at the end {last['open_connections']:.0f}; "
        f"errors {last['errors']:.0f}; p99 max {max(r['p99_ms'] for r in rows):.1f} ms; "
        f"acknowledged {last['acknowledged']:.0f}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
