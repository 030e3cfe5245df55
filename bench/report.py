"""Results → JSON document and markdown table (both re-renderable from the JSON alone)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.stats import Metric, Summary, check_target, ratio, target_gap

__all__ = ["SERVERS", "SERVER_LABELS", "metric_results", "render_markdown", "results_document"]

# Report columns, in order: our server on its two backend pairs, Orthanc, the replay ceiling.
SERVERS = ("ours", "ours_auth", "ours_pg", "s3_replay", "orthanc", "ceiling")
SERVER_LABELS = {
    "ours": "ours (SQLite+files)",
    "ours_auth": "ours (SQLite+files, API keys + audit)",
    "ours_pg": "ours (PostgreSQL+S3)",
    "s3_replay": "S3 replay",
    "orthanc": "Orthanc",
    "ceiling": "ceiling",
}


def metric_results(metric: Metric, summaries: dict[str, Summary]) -> dict[str, Any]:
    """One metric's entry in the JSON document, with ratios and the target verdicts."""
    ours = summaries.get("ours", Summary(note="not run"))
    entry: dict[str, Any] = {
        "id": metric.id,
        "group": metric.group,
        "label": metric.label,
        "unit": metric.unit,
        "higher_is_better": metric.higher_is_better,
        "meaning": metric.meaning,
        "results": {name: summaries[name].to_json() for name in SERVERS if name in summaries},
        "ratios": {
            "ours/orthanc": _r(
                ratio(ours, summaries["orthanc"]) if "orthanc" in summaries else None
            ),
            "ours/ceiling": _r(
                ratio(ours, summaries["ceiling"]) if "ceiling" in summaries else None
            ),
            "ours_auth/ours": _r(
                ratio(summaries["ours_auth"], ours) if "ours_auth" in summaries else None
            ),
            "ours_pg/s3_replay": _r(
                ratio(summaries["ours_pg"], summaries["s3_replay"])
                if "ours_pg" in summaries and "s3_replay" in summaries
                else None
            ),
            "ours_pg/orthanc": _r(
                ratio(summaries["ours_pg"], summaries["orthanc"])
                if "ours_pg" in summaries and "orthanc" in summaries
                else None
            ),
        },
    }
    if metric.target is not None:
        target = metric.target
        entry["target"] = {
            "op": target.op,
            "value": target.value,
            "on": target.on,
            "text": target.text,
            "applies_to": list(target.backends),
        }
        verdicts = {}
        for name in target.backends:
            if name in summaries:
                verdicts[name] = {
                    "met": check_target(target, summaries[name], summaries),
                    "gap": target_gap(target, summaries[name], summaries),
                }
        entry["verdicts"] = verdicts
    return entry


def _r(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.3g}")


def results_document(
    meta: dict[str, Any], servers: dict[str, Any], metrics: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The whole results file: run metadata, server descriptions, every metric."""
    return {
        "format": "dicomweb-server-bench/1",
        "meta": meta,
        "servers": servers,
        "metrics": list(metrics),
    }


def _figure(result: dict[str, Any] | None, unit: str) -> str:
    if result is None or result.get("median") is None:
        note = (result or {}).get("note", "")
        return "n/a" + (f" ({note})" if note and len(note) <= 40 else "")
    digits = 1 if unit == "ms" else 0
    median = result["median"]
    p95 = result.get("p95")
    text = f"{median:,.{digits if median < 1000 else 0}f}"
    if median < 10 and unit == "ms":
        text = f"{median:.2f}"
    if p95 is not None:
        p = (
            f"{p95:,.{digits if p95 < 1000 else 0}f}"
            if not (p95 < 10 and unit == "ms")
            else (f"{p95:.2f}")
        )
        text += f" / {p}"
    if result.get("errors"):
        text += f" ⚠{result['errors']} err"
    return text


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _target_text(entry: dict[str, Any]) -> tuple[str, str]:
    target = entry.get("target")
    if not target:
        return "", ""
    verdicts = entry.get("verdicts", {})
    parts = []
    for name, short in (("ours", "embedded"), ("ours_pg", "pg+s3")):
        if name in verdicts:
            met = verdicts[name]["met"]
            mark = "n/a" if met is None else ("✅" if met else "❌ " + verdicts[name]["gap"])
            parts.append(f"{short}: {mark}")
    return target["text"], "; ".join(parts)


def _cpu_table(metrics: list[dict[str, Any]]) -> list[str]:
    """Server CPU per stored instance: steadier than rates on a shared machine."""
    key = "server_cpu_ms_per_instance"
    rows = [m for m in metrics if any(key in r.get("extra", {}) for r in m["results"].values())]
    if not rows:
        return []
    names = [n for n in SERVERS if any(n in m["results"] for m in rows)]
    lines = [
        "",
        "Server CPU per stored instance, ms (median over rounds; user + system time of the"
        " server's processes, PostgreSQL and the S3 gateway not counted):",
        "",
        "| Metric | " + " | ".join(SERVER_LABELS[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for m in rows:
        cells = []
        for name in names:
            value = m["results"].get(name, {}).get("extra", {}).get(key)
            cells.append("n/a" if value is None else f"{value:.2f}")
        lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(document: dict[str, Any]) -> str:
    """The results table plus a header naming the machine, the load and the corpus."""
    meta = document["meta"]
    servers = document["servers"]
    lines = [
        f"# Benchmark results ({meta.get('started', '?')})",
        "",
        f"- Machine: {meta.get('cpus', '?')} CPUs, {meta.get('machine', '')}; "
        f"load average before/after: {meta.get('load_before', '?')} / "
        f"{meta.get('load_after', '?')}",
        f"- Mode: {meta.get('mode', '?')}; rounds interleaved per metric: "
        f"{meta.get('rounds', '?')}; duration {meta.get('duration_s', '?')} s",
        f"- Corpus: {meta.get('corpus_text', '')}",
    ]
    # The auth and S3 replay columns only when they ran (--with-auth; PostgreSQL + S3 and the
    # study retrieve); the others always,
    # n/a saying why (Orthanc not installed, a metric it does not support).
    shown = [name for name in SERVERS if name not in ("ours_auth", "s3_replay") or name in servers]
    for name in shown:
        info = servers.get(name)
        if info:
            lines.append(f"- {SERVER_LABELS[name]}: {info.get('description', '')}")
    lines += [
        "",
        "Cells are `median / p95`: for times the p95 is the slowest 5 %, for rates the lowest"
        " 5 % (over rounds). Ratios compare medians of ours (SQLite+files) with the column named.",
        "",
        "| Metric | Unit | "
        + " | ".join(SERVER_LABELS[name] for name in shown)
        + " | ours/Orthanc | ours/ceiling | Target | Met? |",
        "|---|---|" + "---|" * len(shown) + "---|---|---|---|",
    ]
    group = None
    for entry in document["metrics"]:
        if entry["group"] != group:
            group = entry["group"]
            lines.append(f"| **{group}** |" + " |" * (len(shown) + 5))
        results = entry["results"]
        target_text, verdict = _target_text(entry)
        cells = [
            entry["label"],
            entry["unit"],
            *(_figure(results.get(name), entry["unit"]) for name in shown),
            _ratio_text(entry["ratios"].get("ours/orthanc")),
            _ratio_text(entry["ratios"].get("ours/ceiling")),
            target_text,
            verdict,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _cpu_table(document["metrics"])
    notes = meta.get("notes") or []
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
