"""The insight report (intelligence_pb2.InsightReport) as plain text tables, for a
terminal, or as Markdown, for a wiki page or a chat message. `kubernaut insights` prints
one or the other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp
from kubernaut.common.v1 import alert_pb2
from kubernaut.intelligence.v1 import intelligence_pb2

from kubernaut.services.alerts import subject_text

# Alert names and workloads come from alerts: control characters (ANSI escapes, newlines)
# are shown escaped, so that they cannot rewrite a terminal or forge a row.
_CONTROL: Final = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}

Table = tuple[list[str], list[list[str]]]


def _clean(text: str) -> str:
    return text.translate(_CONTROL)


def workload_text(ref: alert_pb2.ResourceRef) -> str:
    """'Deployment shop/web', with its cluster when it is not the default one."""
    text = subject_text(ref)
    return f"{text} (cluster {ref.cluster})" if ref.cluster else text


def _when(stamp: Timestamp) -> str:
    if not stamp.ByteSize():
        return "-"
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M")


def _days(report: intelligence_pb2.InsightReport) -> str:
    seconds = report.window_end.seconds - report.window_start.seconds
    days = seconds / 86400
    return f"{days:g} days" if days != 1 else "1 day"


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def recurring_table(report: intelligence_pb2.InsightReport) -> Table:
    header = ["WORKLOAD", "ALERT", "INCIDENTS", "FIXES NOT HELD", "ACTIONS TRIED", "FIRST", "LAST"]
    rows = [
        [
            workload_text(r.subject),
            r.alert_name,
            str(r.incidents),
            str(r.fixes_not_held),
            ", ".join(r.actions_tried) or "-",
            _when(r.first_seen),
            _when(r.last_seen),
        ]
        for r in report.recurring
    ]
    return header, rows


def actions_table(report: intelligence_pb2.InsightReport) -> Table:
    header = ["ACTION", "ALERT", "ATTEMPTS", "SUCCEEDED", "RATE", "95% INTERVAL"]
    rows = [
        [
            s.action,
            s.alert_name or "(all)",
            str(s.attempts),
            str(s.succeeded),
            f"{s.success_rate:.0%}",
            f"{s.success_lower_bound:.0%}-{s.success_upper_bound:.0%}",
        ]
        for s in report.least_effective_actions
    ]
    return header, rows


def alerts_table(report: intelligence_pb2.InsightReport) -> Table:
    header = ["ALERT", "INCIDENTS", "ALERTS", "WORKLOADS"]
    rows = [
        [a.alert_name, str(a.incidents), str(a.occurrences), str(a.workloads)]
        for a in report.noisiest_alerts
    ]
    return header, rows


def _title(report: intelligence_pb2.InsightReport) -> str:
    return (
        f"Insights {_when(report.window_start)} to {_when(report.window_end)} UTC"
        f" ({_days(report)}): {report.incidents} incidents, {report.alerts} alerts"
    )


def _sections(report: intelligence_pb2.InsightReport) -> list[tuple[str, Table, str]]:
    """(title, table, a note after it) of each table of the report."""
    judged = (
        f"{report.too_few_to_judge} action(s) per alert had fewer than"
        f" {report.min_attempts} attempts: too few to judge."
        if report.too_few_to_judge
        else ""
    )
    return [
        ("Recurring incidents: the fix does not hold", recurring_table(report), ""),
        (
            "Least effective actions (lowest 95% lower bound of the success rate first)",
            actions_table(report),
            judged,
        ),
        ("Noisiest alerts", alerts_table(report), ""),
    ]


def _saved(report: intelligence_pb2.InsightReport) -> str:
    saved = report.time_saved
    return (
        f"{saved.without_a_person} of {saved.remediated} remediated incidents needed no"
        f" person: about {_duration(saved.minutes_saved)} saved"
        f" ({_duration(saved.minutes_per_incident)} each by hand)."
    )


def _truncated(report: intelligence_pb2.InsightReport) -> list[str]:
    if not report.truncated:
        return []
    return ["", "The window held more history than is read at once: the newest was looked at."]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns, two spaces apart, as `kubernaut incidents list` prints."""
    cells = [list(header), *([_clean(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def render_text(report: intelligence_pb2.InsightReport) -> str:
    lines = [_title(report)]
    for title, (header, rows), note in _sections(report):
        lines += ["", title]
        lines += text_table(header, rows) if rows else ["  none"]
        if note:
            lines.append(note)
    lines += ["", "Time saved", _saved(report), *_truncated(report)]
    return "\n".join(lines) + "\n"


def _markdown_cell(text: str) -> str:
    return _clean(text).replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(h.capitalize() for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: intelligence_pb2.InsightReport) -> str:
    lines = [f"# {_title(report)}"]
    for title, (header, rows), note in _sections(report):
        lines += ["", f"## {title}", ""]
        lines += markdown_table(header, rows) if rows else ["None."]
        if note:
            lines += ["", note]
    lines += ["", "## Time saved", "", _saved(report), *_truncated(report)]
    return "\n".join(lines) + "\n"
