"""The terminal report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# -- the report ------------------------------------------------------------------------------------


def format_report(report: dict[str, Any]) -> str:
    """The terminal table: header, throughput, latency, memory."""
    env, results, others = report["environment"], report["results"], report["others_cpu"]
    options = report["options"]
    pg = env["postgresql"]
    db = env["database"]
    reps = options["reps"]
    lines = [
        f"doctorjob bench — {env['date']} — {env['command']}",
        f"machine    {env['cpus']} CPUs, {env['cpu_model']}, {env['memory']} RAM; load average (1/5/15 min) "
        f"before the run {_loads(env['load_average_start'])}, after {_loads(env['load_average_end'])}",
        f"software   Python {env['python']}, Django {env['django']}, psycopg {env['psycopg']}, doctorjob "
        f"{env['doctorjob']}, PostgreSQL {pg['server_version']} (fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']})",
        f"database   scratch database '{db['scratch']}' on {db['host']}:{db['port']} (settings of alias "
        f"'{db['source_alias']}', CONN_MAX_AGE={db['CONN_MAX_AGE']}), created and dropped by this run",
        "DOCTORJOB  " + ", ".join(f"{k}={v}" for k, v in env["DOCTORJOB"].items()),
        f"worker     {env['worker']}",
        f"bench      enqueues in autocommit (REQUIRE_TRANSACTION off) and DEBUG off in every process "
        f"(the project has DEBUG={env['DEBUG']})",
        f"runs       {'median of ' + str(reps) + ' repetitions' if reps > 1 else '1 repetition'}; "
        f"took {env['seconds']:.0f} s",
        "",
    ]

    def rate(key: str) -> float | None:
        return results[key]["rate"] if key in results else None

    rows = [
        (
            "enqueue() one job per transaction, {:,} jobs".format(options["enqueue_jobs"]),
            "enqueue/doctorjob",
            "enqueue/raw",
        ),
        ("  the same with NOTIFY off", "enqueue/doctorjob-no-notify", "enqueue/raw"),
        ("enqueue_many() {:,} jobs in one call".format(options["bulk_jobs"]), "bulk/doctorjob", "bulk/raw"),
    ]
    rows += [
        (
            f"drain {options['jobs']:,} no-op jobs, {p} process{'es' if p > 1 else ''}",
            f"drain/doctorjob/{p}",
            f"drain/raw/{p}",
        )
        for p in options["processes"]
    ]
    if options.get("only"):  # measures left out by --only get no row
        rows = [row for row in rows if row[1] in results or row[2] in results]
    latency_title = f"latency enqueue→start, {options['probes']} probes 20 ms apart (ms)"
    width = max([len(latency_title), *(len(label) for label, *_ in rows)]) + 2
    if rows:
        lines.append(f"{'throughput (jobs/s)':<{width}}{'doctorjob':>11}{'raw SQL':>11}{'ratio':>8}{'others CPU':>12}")
    for label, ours, raw in rows:
        a, b = rate(ours), rate(raw)
        noise = max(others.get(ours, 0), others.get(raw, 0))
        capped = " (capped)" if results.get(ours, {}).get("capped") else ""
        lines.append(
            f"{label:<{width}}{_num(a):>11}{_num(b):>11}"
            f"{(f'{a / b:.2f}x' if a and b else '-'):>8}{noise:>11.0%}{capped}"
        )
    if rows:
        lines.append("")

    poll = env["poll_interval"]
    if any(key.startswith("latency/") for key in results):
        lines.append(f"{latency_title:<{width}}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>9}{'others CPU':>12}")
    for key, label in (
        ("latency/doctorjob/notify", "doctorjob, NOTIFY"),
        ("latency/raw/notify", "raw SQL, LISTEN/NOTIFY"),
        ("latency/doctorjob/poll", f"doctorjob, NOTIFY off (poll {poll:g} s)"),
        ("latency/raw/poll", f"raw SQL, polling every {poll:g} s"),
    ):
        if key in results:
            r = results[key]
            lines.append(
                f"{label:<{width}}{r['p50_ms']:>8.1f}{r['p95_ms']:>8.1f}{r['p99_ms']:>8.1f}"
                f"{r['max_ms']:>9.1f}{others[key]:>12.0%}"
            )
    relayed = [key for key in results if key.startswith("relay/")]
    if relayed:
        title = f"relay {options['relay_jobs']:,} jobs to a broker, 1 run_jobs --relay process (jobs/s)"
        lines += ["", f"{title:<{width}}{'relayed':>11}{'':>19}{'others CPU':>12}"]
        for key in relayed:
            r = results[key]
            capped = " (capped)" if r.get("capped") else ""
            lines.append(f"{'  ' + r['broker']:<{width}}{_num(r['rate']):>11}{'':>19}{others[key]:>11.0%}{capped}")
    if "memory" in results:
        m = results["memory"]
        growth = f"{m['growth_pct']:+.1f}%" if m["growth_pct"] is not None else "n/a"
        lines += [
            "",
            f"worker memory (VmRSS of one run_jobs process): idle {_mib(m['idle_kib'])}, after "
            f"{m['small']:,} jobs {_mib(m['after_small_kib'])}, after {m['large']:,} jobs "
            f"{_mib(m['after_large_kib'])} ({growth} from {m['small']:,} to {m['large']:,}; others CPU "
            f"{others['memory']:.0%})",
        ]
    noisy = [key for key, share in others.items() if share > 0.10]
    if noisy:
        lines += [
            "",
            f"note: other processes used more than 10% of the machine during {len(noisy)} measure(s) "
            f"({', '.join(noisy)}): those numbers are noisy",
        ]
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _loads(loads: Sequence[float]) -> str:
    return " / ".join(map(str, loads)) or "n/a"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"
