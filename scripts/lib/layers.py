#!/usr/bin/env python3
"""The library's import graph, checked against its layer order.

Reads every `crate::` path in src/ (plain and grouped `use` items, and paths
written inline), resolves each to the file that defines the name (following
`pub use` re-exports, so a `crate::Error` shortcut counts as an import of
`error.rs`), and reports:

- circles: strongly connected groups of files; a group inside one module
  (two files of one concept) is allowed, a group spanning modules is not;
- upward imports: a file importing a module of a higher layer; each must be
  marked on its line with a comment containing `upward import:` saying why;
- the largest files.

    python3 scripts/lib/layers.py            report, exit 1 on a violation
    python3 scripts/lib/layers.py --max-upward 3

The layer order is DESIGN.md's: error -> config -> retry -> metrics/health ->
postgres/mongo -> manager/builder (and admin, direct connections beside the
pool) -> migrate/testing/http. docs/architecture.md says what each holds.
"""

import argparse
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, "src")

# Module (first path segment under src/) -> layer, bottom up.
LAYERS = {
    "error": 0,
    "pool_status": 0,
    "clock": 0,
    "config": 1,
    "retry": 2,
    "metrics": 3,
    "health": 3,
    "spans": 3,
    "postgres": 4,
    "mongo": 4,
    "manager": 5,
    "builder": 5,
    "admin": 5,
    "migrate": 6,
    "testing": 6,
    "http": 6,
}

USE_RE = re.compile(r"\buse\s+crate::(\{.*?\}|[^;]*);", re.S)
INLINE_RE = re.compile(r"\bcrate::((?:[A-Za-z_][A-Za-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)")
PUB_USE_RE = re.compile(r"\bpub(?:\([a-z]+\))?\s+use\s+([^;]*);", re.S)


def strip_comments(text):
    """Comments blanked out, newlines kept, so offsets keep their line."""

    def blank(match):
        return re.sub(r"[^\n]", " ", match.group(0))

    text = re.sub(r"/\*.*?\*/", blank, text, flags=re.S)
    return re.sub(r"//[^\n]*", blank, text)


def rust_files():
    for base, _, names in os.walk(SRC):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(base, name)
                rel = os.path.relpath(path, SRC)
                if not rel.startswith("bin" + os.sep):
                    yield rel


def module_file(segments):
    """The file of module path `segments` (relative to src), or None."""
    if not segments:
        return "lib.rs"
    base = os.path.join(*segments)
    for candidate in (base + ".rs", os.path.join(base, "mod.rs")):
        if os.path.exists(os.path.join(SRC, candidate)):
            return candidate
    return None


def module_path_of(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def expand_group(prefix, body):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    body = body.strip()
    if body.startswith("{") and body.endswith("}"):
        inner = body[1:-1]
        items, depth, current = [], 0, ""
        for ch in inner:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                items.append(current)
                current = ""
            else:
                current += ch
        items.append(current)
        out = []
        for item in items:
            item = item.strip()
            if item:
                out.extend(expand_group(prefix, item))
        return out
    if "::{" in body:
        head, rest = body.split("::{", 1)
        return expand_group(prefix + head.split("::"), "{" + rest)
    body = re.split(r"\s+as\s+", body)[0].strip()
    return [prefix + [s for s in body.split("::") if s]]


_reexports = {}


def reexports(rel):
    """Names a file re-exports: name -> module path segments it comes from."""
    if rel in _reexports:
        return _reexports[rel]
    found = {}
    text = strip_comments(open(os.path.join(SRC, rel)).read())
    here = module_path_of(rel)
    for match in PUB_USE_RE.finditer(text):
        for path in expand_group([], match.group(1)):
            if not path:
                continue
            if path[0] == "crate":
                target = path[1:]
            elif path[0] == "self":
                target = here + path[1:]
            elif path[0] == "super":
                target = here[:-1] + path[1:]
            elif module_file(here + path[:1]) is not None and len(path) > 1:
                target = here + path
            else:
                continue
            found[path[-1]] = target
    _reexports[rel] = found
    return found


def resolve(path, depth=0):
    """The file defining `crate::<path>`, following re-exports."""
    # The longest prefix that is a module.
    for cut in range(len(path), -1, -1):
        rel = module_file(path[:cut])
        if rel is None:
            continue
        rest = path[cut:]
        if rest and depth < 8:
            target = reexports(rel).get(rest[0])
            if target is not None and target != path[:cut] + rest[:1]:
                return resolve(target + rest[1:], depth + 1)
        return rel
    return None


def layer_of(rel):
    top = module_path_of(rel)
    return LAYERS.get(top[0]) if top else None


def graph():
    edges = defaultdict(dict)  # file -> {target file: marked?}
    for rel in sorted(rust_files()):
        raw = open(os.path.join(SRC, rel)).read()
        marked_lines = [i for i, line in enumerate(raw.splitlines()) if "upward import:" in line]
        text = strip_comments(raw)
        paths = []
        for match in USE_RE.finditer(text):
            line = text.count("\n", 0, match.start())
            for path in expand_group([], match.group(1)):
                paths.append((path, line))
        for match in INLINE_RE.finditer(text):
            line = text.count("\n", 0, match.start())
            paths.append((match.group(1).split("::"), line))
        for path, line in paths:
            target = resolve(path)
            if target is None or target == rel or target == "lib.rs":
                continue
            # An explanation on the line itself or in the six lines above.
            marked = any(line - 6 <= m <= line for m in marked_lines)
            edges[rel][target] = edges[rel].get(target, False) or marked
    return edges


def circles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-upward", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="report only, never fail")
    args = parser.parse_args()

    edges = graph()
    groups = circles(edges)
    spanning = [g for g in groups if len({module_path_of(f)[0] for f in g}) > 1]
    upward = []
    for source, targets in sorted(edges.items()):
        for target, marked in sorted(targets.items()):
            a, b = layer_of(source), layer_of(target)
            if a is not None and b is not None and b > a:
                upward.append((source, target, marked))
    sizes = sorted(
        ((sum(1 for _ in open(os.path.join(SRC, f))), f) for f in rust_files()), reverse=True
    )

    print(f"files: {len(sizes)}, imports between files: {sum(len(t) for t in edges.values())}")
    print(f"circles: {len(groups)} ({len(spanning)} spanning modules)")
    for group in groups:
        kind = "SPANS MODULES" if group in spanning else "within one module"
        print(f"  {len(group)} files, {kind}: {' '.join(group)}")
    print(f"upward imports: {len(upward)}")
    for source, target, marked in upward:
        print(f"  {source} -> {target}{'' if marked else '  (no `upward import:` comment)'}")
    print("largest files: " + ", ".join(f"{f} {n}" for n, f in sizes[:3]))

    failed = spanning or len(upward) > args.max_upward or any(not m for _, _, m in upward)
    if failed and not args.report:
        print("layering check failed: see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
