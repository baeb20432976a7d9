"""Turns the measurements of scripts/bench into docs/benchmarks.md and the
throughput chart, and prints the ratios.

Input: results.jsonl (one measurement per line: kind, round, series, tasks,
pool, value, extra) and meta.json (machine, versions, run settings).
The part of the report below NOTES_MARKER is written by hand and kept.
"""

import argparse
import json
import os
import statistics
import sys

NOTES_MARKER = "<!-- scripts/bench writes everything above this line; the notes below are kept -->"
GRID = [(1, 1), (8, 8), (32, 8), (256, 16)]
CONTENDERS = ["dbmanager", "deadpool", "bb8", "sqlx"]
OPERATIONS = [("acquire_release", "acquire + release"), ("select1", "acquire + SELECT 1 + release")]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def pick(rows, kind, series=None, tasks=None, pool=None):
    """Measurements of one kind/series/point, ordered by round."""
    found = [
        r for r in rows
        if r["kind"] == kind
        and (series is None or r["series"] == series)
        and (tasks is None or r["tasks"] == tasks)
        and (pool is None or r["pool"] == pool)
    ]
    return sorted(found, key=lambda r: r["round"])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired_ratios(numerators, denominators):
    """Per-round ratios of two series measured in the same rounds."""
    by_round = {r["round"]: r["value"] for r in denominators}
    return [r["value"] / by_round[r["round"]] for r in numerators if by_round.get(r["round"])]


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def fmt_ratio(value):
    return "n/a" if value is None else f"{value:.3f}"


def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def rounds_text(rows, digits=0):
    return " / ".join(fmt(r["value"], digits) for r in rows)


class Report:
    def __init__(self, rows, meta):
        self.rows = rows
        self.meta = meta
        self.lines = []
        self.targets = []
        self.console = []

    def out(self, line=""):
        self.lines.append(line)

    # -- sections ------------------------------------------------------------

    def pgbench(self):
        self.out("### pgbench -S -M prepared vs the harness's pgbench-S")
        self.out()
        self.out(
            f"Same server, same dataset (scale {self.meta['scale']}), same connection count, "
            f"{self.meta['duration']} s each (the harness and the driver baseline after a {self.meta['warmup']} s warm-up), "
            "alternating pgbench / harness / bare tokio-postgres in every round. Throughput in operations "
            "(transactions) per second. *Bare tokio-postgres* is `examples/tokio_postgres_bench.rs`: one "
            "client per task, the same prepared statement, no pool, no harness: the driver's own ceiling."
        )
        self.out()
        self.out("| connections | pgbench tps | harness ops/s | bare tokio-postgres ops/s | harness / pgbench | target ≥ 0.9 | tokio-postgres / pgbench | harness / tokio-postgres |")
        self.out("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
        for n in (8, 16):
            theirs = pick(self.rows, "pgbench", "pgbench", n)
            ours = pick(self.rows, "pgbench", "harness", n)
            driver = pick(self.rows, "pgbench", "tokio-postgres", n)
            ratio = median(paired_ratios(ours, theirs))
            driver_ratio = median(paired_ratios(driver, theirs))
            layer_ratio = median(paired_ratios(ours, driver))
            ok = None if ratio is None else ratio >= 0.9
            self.out(
                f"| {n} | {fmt(median([r['value'] for r in theirs]))} | {fmt(median([r['value'] for r in ours]))} "
                f"| {fmt(median([r['value'] for r in driver]))} | {fmt_ratio(ratio)} | {verdict(ok)} "
                f"| {fmt_ratio(driver_ratio)} | {fmt_ratio(layer_ratio)} |"
            )
            self.targets.append((f"harness pgbench-S ≥ 0.9 × pgbench -S -M prepared, {n} connections", fmt_ratio(ratio), ok))
            self.console.append(
                f"pgbench-S, {n} connections: harness / pgbench {fmt_ratio(ratio)}; "
                f"bare tokio-postgres / pgbench {fmt_ratio(driver_ratio)}; harness / bare tokio-postgres {fmt_ratio(layer_ratio)}"
            )
        self.out()
        self.out("Per round (pgbench / harness / bare tokio-postgres):")
        self.out()
        for n in (8, 16):
            rounds = zip(
                pick(self.rows, "pgbench", "pgbench", n),
                pick(self.rows, "pgbench", "harness", n),
                pick(self.rows, "pgbench", "tokio-postgres", n),
            )
            text = "; ".join(f"{fmt(a['value'])} / {fmt(b['value'])} / {fmt(c['value'])}" for a, b, c in rounds)
            self.out(f"- {n} connections: {text}")
        self.out()
        self.out("Latency and acquire wait of the harness runs (medians over the rounds, µs):")
        self.out()
        self.out("| connections | latency p50 | p90 | p99 | p99.9 | acquire wait p50 | p99 | p99.9 |")
        self.out("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in (8, 16):
            ours = pick(self.rows, "pgbench", "harness", n)
            lat = lambda key: median([r["extra"]["latency"][key] for r in ours])
            acq = lambda key: median([r["extra"]["acquire_wait"][key] for r in ours])
            self.out(
                f"| {n} | {fmt(lat('p50_us'), 1)} | {fmt(lat('p90_us'), 1)} | {fmt(lat('p99_us'), 1)} | {fmt(lat('p999_us'), 1)} "
                f"| {fmt(acq('p50_us'), 2)} | {fmt(acq('p99_us'), 2)} | {fmt(acq('p999_us'), 2)} |"
            )
        self.out()

    def saturation(self):
        self.out("### 256 tasks on 16 connections vs 16 on 16")
        self.out()
        self.out("The harness's pgbench-S, pool of 16, alternating 16 / 256 tasks in every round.")
        self.out()
        self.out("| tasks | ops/s (median) | per round | acquire wait p99 µs (median) | p99.9 | max | latency p99 µs | acquire timeouts (all rounds) | errors |")
        self.out("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        timeouts_256 = None
        for tasks in (16, 256):
            runs = pick(self.rows, "saturation", f"t{tasks}")
            timeouts = sum(r["extra"]["acquire_timeouts"] for r in runs)
            errors = sum(r["extra"]["errors"] for r in runs)
            if tasks == 256:
                timeouts_256 = timeouts
            acq = lambda key: median([r["extra"]["acquire_wait"][key] for r in runs])
            self.out(
                f"| {tasks} | {fmt(median([r['value'] for r in runs]))} | {rounds_text(runs)} "
                f"| {fmt(acq('p99_us'), 1)} | {fmt(acq('p999_us'), 1)} | {fmt(acq('max_us'), 1)} "
                f"| {fmt(median([r['extra']['latency']['p99_us'] for r in runs]), 1)} | {timeouts} | {errors} |"
            )
        ratio = median(paired_ratios(pick(self.rows, "saturation", "t256"), pick(self.rows, "saturation", "t16")))
        ok = None if ratio is None else ratio >= 0.95
        self.out()
        self.out(f"256 / 16 throughput (median of per-round ratios): **{fmt_ratio(ratio)}** (target ≥ 0.95: {verdict(ok)}).")
        self.out()
        self.targets.append(("256 tasks on 16 connections ≥ 0.95 × 16 on 16", fmt_ratio(ratio), ok))
        self.targets.append(("no acquire timeouts at 256 tasks on 16", str(timeouts_256), None if timeouts_256 is None else timeouts_256 == 0))
        p99 = median([r["extra"]["acquire_wait"]["p99_us"] for r in pick(self.rows, "saturation", "t256")])
        self.console.append(f"256 tasks / 16 tasks on 16 connections: {fmt_ratio(ratio)}; acquire timeouts {timeouts_256}; acquire wait p99 {fmt(p99, 1)} µs")

    def criterion(self):
        self.out("### Pool overhead: criterion grid (`benches/pool`)")
        self.out()
        self.out(
            "Wall time per operation with T tasks sharing a pool of P connections (ns; lower is better; "
            "the inverse of throughput). Median of each round's criterion median; ratios are medians of "
            "per-round ratios. `vs bb8` / `vs sqlx` below 1 mean DatabaseManager is faster."
        )
        self.out()
        for op, title in OPERATIONS:
            self.out(f"**{title}**")
            self.out()
            self.out("| tasks / pool | DatabaseManager | raw deadpool | bb8 | sqlx | manager / deadpool | vs bb8 | vs sqlx |")
            self.out("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for tasks, pool in GRID:
                series = {c: pick(self.rows, "criterion", f"{op}/{c}", tasks, pool) for c in CONTENDERS}
                values = {c: median([r["value"] for r in series[c]]) for c in CONTENDERS}
                ratio = lambda other: median(paired_ratios(series["dbmanager"], series[other]))
                r_dp, r_bb8, r_sqlx = ratio("deadpool"), ratio("bb8"), ratio("sqlx")
                self.out(
                    f"| {tasks} / {pool} | {fmt(values['dbmanager'])} | {fmt(values['deadpool'])} | {fmt(values['bb8'])} "
                    f"| {fmt(values['sqlx'])} | {fmt_ratio(r_dp)} | {fmt_ratio(r_bb8)} | {fmt_ratio(r_sqlx)} |"
                )
                if op == "acquire_release":
                    self.targets.append((f"acquire+release manager / deadpool ≤ 1.05 at {tasks}/{pool}", fmt_ratio(r_dp), None if r_dp is None else r_dp <= 1.05))
                    if (tasks, pool) in ((32, 8), (256, 16)):
                        ok = None if r_bb8 is None or r_sqlx is None else (r_bb8 <= 1.0 and r_sqlx <= 1.0)
                        self.targets.append((f"acquire+release manager at or better than bb8 and sqlx at {tasks}/{pool}", f"{fmt_ratio(r_bb8)} / {fmt_ratio(r_sqlx)}", ok))
                self.console.append(
                    f"{op} {tasks}/{pool}: manager/deadpool {fmt_ratio(r_dp)}, manager/bb8 {fmt_ratio(r_bb8)}, manager/sqlx {fmt_ratio(r_sqlx)}"
                )
            self.out()

    def mongo(self):
        self.out("### MongoDB ping: manager vs bare driver")
        self.out()
        tasks = self.meta["mongo_tasks"]
        self.out(
            f"`{{ping: 1}}` with {tasks} tasks on a pool of {tasks}, {self.meta['duration']} s, alternating, "
            f"{2 * self.meta['rounds']} rounds; "
            f"server: {self.meta['mongo']}. Both sides use the same harness loop; the baseline is "
            "`examples/mongo_driver_bench.rs` (a bare `mongodb::Client` with the manager's pool settings)."
        )
        self.out()
        manager = pick(self.rows, "mongo", "manager")
        driver = pick(self.rows, "mongo", "driver")
        ratio = median(paired_ratios(manager, driver))
        ok = None if ratio is None else ratio >= 0.98
        self.out("| client | ops/s (median) | per round | latency p50 µs | p99 µs |")
        self.out("| --- | ---: | --- | ---: | ---: |")
        for name, runs in (("DatabaseManager", manager), ("bare driver", driver)):
            lat = lambda key: median([r["extra"]["latency"][key] for r in runs])
            self.out(f"| {name} | {fmt(median([r['value'] for r in runs]))} | {rounds_text(runs)} | {fmt(lat('p50_us'), 1)} | {fmt(lat('p99_us'), 1)} |")
        self.out()
        self.out(f"manager / driver (median of per-round ratios): **{fmt_ratio(ratio)}** (target ≥ 0.98: {verdict(ok)}).")
        self.out()
        self.targets.append(("MongoDB ping manager / driver ≥ 0.98", fmt_ratio(ratio), ok))
        self.console.append(f"MongoDB ping manager / driver: {fmt_ratio(ratio)}")

    def multiplex(self):
        self.out("### Multiplexed mode vs pgbench and the pooled path")
        self.out()
        self.out(
            f"pgbench's select-only statement (scale {self.meta['scale']}), {self.meta['duration']} s each, "
            "alternating in every round: `pgbench -S -M prepared -c 16 -j 2`; the harness's pgbench-S through "
            "`db.postgres()?.multiplexed()` with 256 tasks on 16 and on 4 connections (`--mode multiplexed`); "
            "the pooled path with 16 and 256 tasks on 16 connections. Ratios are medians of per-round ratios to "
            "pgbench. Latency in µs, medians over the rounds; pgbench's from its per-transaction log (5 % sample)."
        )
        self.out()
        self.out("| client | connections | tasks | ops/s (median) | per round | / pgbench | latency p50 | p99 | p99.9 |")
        self.out("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        pgbench = pick(self.rows, "multiplex", "pgbench")
        for series, label, tasks, pool in (
            ("pgbench", "pgbench -S -M prepared", 16, 16),
            ("mux-16", "multiplexed", 256, 16),
            ("mux-4", "multiplexed", 256, 4),
            ("pooled-16", "pooled", 16, 16),
            ("pooled-256", "pooled", 256, 16),
        ):
            runs = pick(self.rows, "multiplex", series)
            ratio = None if series == "pgbench" else median(paired_ratios(runs, pgbench))
            lat = lambda key: median([(r["extra"] or {}).get("latency", {}).get(key) if (r["extra"] or {}).get("latency") else None for r in runs])
            self.out(
                f"| {label} | {pool} | {tasks} | {fmt(median([r['value'] for r in runs]))} | {rounds_text(runs)} "
                f"| {fmt_ratio(ratio)} | {fmt(lat('p50_us'), 1)} | {fmt(lat('p99_us'), 1)} | {fmt(lat('p999_us'), 1)} |"
            )
            if series in ("mux-16", "mux-4"):
                target = 1.4 if series == "mux-16" else 1.2
                ok = None if ratio is None else ratio >= target
                self.targets.append((f"multiplexed, 256 tasks on {pool} connections ≥ {target} × pgbench -S at 16", fmt_ratio(ratio), ok))
                self.console.append(f"multiplexed 256 tasks on {pool} / pgbench 16: {fmt_ratio(ratio)}")
        self.out()
        self.out(
            "Head of line: the same pgbench-S load with one more task running `SELECT pg_sleep(1)` back to back "
            "through the same path (unmeasured). Multiplexed: 256 tasks on 4 connections; pooled: 256 tasks on 16."
        )
        self.out()
        self.out("| path | ops/s (median) | latency p50 | p99 | p99.9 | max | without the sleep: p99 |")
        self.out("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for series, plain, label in (("hol-mux-4", "mux-4", "multiplexed, 4 connections"), ("hol-pooled-256", "pooled-256", "pooled, 16 connections")):
            runs = pick(self.rows, "multiplex", series)
            base = pick(self.rows, "multiplex", plain)
            lat = lambda rows, key: median([r["extra"]["latency"][key] for r in rows])
            self.out(
                f"| {label} | {fmt(median([r['value'] for r in runs]))} | {fmt(lat(runs, 'p50_us'), 1)} | {fmt(lat(runs, 'p99_us'), 1)} "
                f"| {fmt(lat(runs, 'p999_us'), 1)} | {fmt(lat(runs, 'max_us'), 1)} | {fmt(lat(base, 'p99_us'), 1)} |"
            )
            self.console.append(f"head of line, {label}: p99 {fmt(lat(runs, 'p99_us'), 1)} µs (without: {fmt(lat(base, 'p99_us'), 1)} µs)")
        self.out()

    def chart(self, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
        for series, label, style in (
            ("pgbench", "pgbench -S -M prepared (clients = connections)", "s--"),
            ("tokio-postgres", "bare tokio-postgres (one client per task)", "^:"),
            ("harness", "dbmanager bench pgbench-S (pool = min(tasks, 16))", "o-"),
            ("multiplexed", "dbmanager bench pgbench-S --mode multiplexed (4 connections)", "D-"),
        ):
            runs = sorted(pick(self.rows, "sweep", series), key=lambda r: r["tasks"])
            if runs:
                ax.plot([r["tasks"] for r in runs], [r["value"] for r in runs], style, label=label)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["tasks"] for r in pick(self.rows, "sweep")})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("concurrent tasks (pgbench clients)")
        ax.set_ylabel("operations per second")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"Select-only throughput, pgbench scale {self.meta['scale']}, {self.meta['nproc']} CPUs shared with the server")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    def sweep_table(self):
        self.out("### Task-count sweep (the chart's data)")
        self.out()
        self.out(f"One run each, {self.meta['sweep_duration']} s; the harness's pool is min(tasks, 16).")
        self.out()
        series = {name: {r["tasks"]: r for r in pick(self.rows, "sweep", name)} for name in ("pgbench", "tokio-postgres", "harness")}
        self.out("| tasks | pgbench tps | bare tokio-postgres ops/s | harness ops/s | harness acquire wait p99 µs |")
        self.out("| ---: | ---: | ---: | ---: | ---: |")
        for tasks in sorted(set().union(*[set(v) for v in series.values()])):
            p, d, h = (series[name].get(tasks) for name in ("pgbench", "tokio-postgres", "harness"))
            self.out(
                f"| {tasks} | {fmt(p['value']) if p else '—'} | {fmt(d['value']) if d else '—'} | {fmt(h['value']) if h else '—'} "
                f"| {fmt(h['extra']['acquire_wait']['p99_us'], 1) if h else '—'} |"
            )
        self.out()

    # -- whole document --------------------------------------------------------

    def document(self, chart_name):
        m = self.meta
        body = self.lines
        self.lines = []
        self.out("# Benchmarks")
        self.out()
        self.out(
            f"Generated by `scripts/bench` ({m['mode']} run, {m['rounds']} round{'s' if m['rounds'] != 1 else ''}, "
            f"{m['duration']} s per measurement) on {m['date']}. Every figure in the tables comes from that one run "
            "on one ephemeral PostgreSQL server; the notes at the end explain them and cite other measurements."
        )
        self.out()
        self.out("## Machine and versions")
        self.out()
        self.out(f"- CPU: {m['cpu']}, `nproc` = {m['nproc']}; memory {m['memory']}; {m['kernel']}")
        self.out(f"- load average before / after the run: {m['load_before']} / {m['load_after']} (the machine is shared: other builds ran meanwhile)")
        self.out(f"- {m['rustc']}")
        self.out(f"- PostgreSQL {m['postgres']} (ephemeral cluster, `fsync=off`, defaults otherwise); {m['pgbench']}")
        self.out(f"- MongoDB server: {m['mongo']}")
        crates = ", ".join(
            f"{name} {version}" for name, version in (line.split(" ", 1) for line in m["crates"].splitlines() if " " in line) if version
        )
        self.out(f"- crates: {crates}")
        self.out(f"- harness command: `{m['harness']} bench ...`")
        self.out()
        self.out("## Targets")
        self.out()
        self.out("| target | measured | |")
        self.out("| --- | --- | --- |")
        for name, measured, ok in self.targets:
            self.out(f"| {name} | {measured} | {verdict(ok)} |")
        self.out()
        self.out("## Results")
        self.out()
        self.lines.extend(body)
        self.out(f"![Throughput against task count]({chart_name})")
        self.out()
        self.out("## Reproduce")
        self.out()
        self.out("```sh")
        self.out("scripts/bench            # this report: docs/benchmarks.md and docs/benchmarks-throughput.png")
        self.out("scripts/bench --quick    # smoke run; report under .tools/bench-run/")
        self.out("# pieces by hand, against a server of your own:")
        self.out("pgbench -i -s 10 \"$DATABASE_URL\"")
        self.out("cargo run --release -p dbmanager-cli --bin dbmanager -- bench --workload pgbench-S --tasks 16 --pool-size 16 --duration 10s --json")
        self.out("pgbench -n -S -M prepared -c 16 -j 2 -T 10 \"$DATABASE_URL\"")
        self.out("cargo run --release -p dbmanager-cli --bin dbmanager -- bench --workload pgbench-S --mode multiplexed --tasks 256 --pool-size 4 --duration 10s --json")
        self.out("cargo run --release -p dbmanager-cli --bin dbmanager -- bench --workload pgbench-S --mode multiplexed --tasks 256 --pool-size 4 --slow-statement 1s --json")
        self.out("scripts/bench --only multiplex --rounds 3 --duration 8s   # the multiplexed comparison alone")
        self.out("cargo bench -p dbmanager-bench --bench pools")
        self.out("DATABASE_URL=... cargo run --release -p dbmanager-bench --example tokio_postgres_bench -- --tasks 16 --duration 10s")
        self.out("MONGODB_URL=... cargo run --release -p dbmanager-bench --example mongo_driver_bench -- --workload ping --tasks 8 --pool-size 8 --duration 10s")
        self.out("```")
        self.out()
        return "\n".join(self.lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True)
    parser.add_argument("--meta", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--chart", required=True)
    args = parser.parse_args()

    rows = load(args.results)
    with open(args.meta) as f:
        meta = json.load(f)
    report = Report(rows, meta)
    if not meta.get("only"):
        report.pgbench()
        report.saturation()
        report.criterion()
        report.mongo()
    if meta.get("only") in (None, "", "multiplex"):
        report.multiplex()
    if not meta.get("only"):
        report.sweep_table()
    report.chart(args.chart)
    generated = report.document(os.path.relpath(args.chart, os.path.dirname(os.path.abspath(args.report))))

    notes = "\n## Notes\n\n(Written by hand: profiling results and what remains.)\n"
    if os.path.exists(args.report):
        with open(args.report) as f:
            existing = f.read()
        if NOTES_MARKER in existing:
            notes = existing.split(NOTES_MARKER, 1)[1]
    text = generated + "\n" + NOTES_MARKER + "\n"
    if notes.strip():
        text += "\n" + notes.lstrip("\n")
    with open(args.report, "w") as f:
        f.write(text)

    print("\n== ratios ==")
    for line in report.console:
        print(line)
    print("\n== targets ==")
    for name, measured, ok in report.targets:
        print(f"{verdict(ok).strip('*'):>7}  {name}: {measured}")


if __name__ == "__main__":
    sys.exit(main())
