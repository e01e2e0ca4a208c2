"""The ingest data report as pages: Markdown (the KFP UI, MLflow) and self-contained
HTML, from the report's numbers (components.data.data_report) and its pictures."""

from __future__ import annotations

import html

from components.core.html_images import img_tag

# Bound the HTML/Markdown size on large, messy sources; report.json and the manifest
# always list everything.
MAX_TABLE_ROWS = 300


def _summary_lines(report: dict) -> list[str]:
    return [
        f"Source `{report['source']}` (format {report['format']}).",
        f"Files found **{report['files_found']}** = ingested **{report['ingested']}** + "
        f"quarantined **{report['quarantined']}** + ignored **{report['ignored']}**.",
        f"Exact-duplicate groups {report['duplicate_groups']} (label conflicts {report['label_conflict_groups']}, "
        f"Train/Test leaks {report['split_leak_groups']}); near-duplicate groups {report['near_duplicate_groups']} "
        f"(with different labels {report['near_duplicate_label_conflict_groups']}, across Train/Test "
        f"{report['near_duplicate_split_leak_groups']}).",
    ] + (
        [f"Label-file rows with no image: {report['label_rows_without_image']}."]
        if report["label_rows_without_image"]
        else []
    )


def _class_rows(report: dict) -> list[tuple[str, int, int]]:
    classes = sorted(set(report["class_counts_before"]) | set(report["class_counts"]))
    return [(c, report["class_counts_before"].get(c, 0), report["class_counts"].get(c, 0)) for c in classes]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict, groups: list[tuple[str, list[dict]]], samples: dict, histogram: str) -> str:
    title = "# Data report" + (" (SYNTHETIC data, not medical images)" if report["synthetic"] else "")
    lines = [
        title,
        "",
        *_summary_lines(report),
        "",
        "## Images per class",
        "",
        "| class | labelled | ingested |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c} | {before} | {after} |" for c, before, after in _class_rows(report)]
    for status in ("quarantined", "ignored"):
        rows = report[f"{status}_files"]
        lines += ["", f"## {status.capitalize()} files ({len(rows)})", ""]
        lines += [", ".join(f"{code} {n}" for code, n in report["reason_counts"][status].items()) or "none", ""]
        if rows:
            lines += ["| file | reason |", "|---|---|"]
            lines += [f"| `{_md_cell(r['relpath'])}` | {_md_cell(r['reason'])} |" for r in rows[:MAX_TABLE_ROWS]]
            if len(rows) > MAX_TABLE_ROWS:
                lines.append(f"| ... {len(rows) - MAX_TABLE_ROWS} more in report.json | |")
    for heading, rendered in groups:
        lines += ["", f"## {heading}", ""]
        for number, group in enumerate(rendered, start=1):
            lines.append(
                f"{number}. "
                + "; ".join(
                    f"![]({f['thumb']}) `{_md_cell(f['relpath'])}` {f['label']} ({f['split']}, {f['status']})"
                    for f in group["files"]
                )
            )
    lines += ["", "## Image sizes", "", f"![size histogram]({histogram})", "", "## Samples per class", ""]
    for label, thumbs in samples.items():
        lines.append(f"**{label}** " + " ".join(f"![{_md_cell(p)}]({t})" for p, t in thumbs if t))
        lines.append("")
    return "\n".join(lines) + "\n"


def render_html(report: dict, groups: list[tuple[str, list[dict]]], samples: dict, histogram: str) -> str:
    def esc(value: object) -> str:
        return html.escape(str(value))

    def md_to_html(line: str) -> str:  # the summary lines use **bold** and `code` only
        parts = esc(line).split("**")
        line = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
        parts = line.split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Data report</title><style>"
        "body{font-family:sans-serif;margin:1em 2em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        "table{border-collapse:collapse}.group{margin:6px 0;padding:4px;border:1px solid #ddd}"
        ".file{display:inline-block;margin:3px;font-size:11px;max-width:180px;vertical-align:top}"
        ".warn{color:#a00;font-weight:bold}</style></head><body><h1>Data report</h1>"
    ]
    if report["synthetic"]:
        out.append("<p class='warn'>SYNTHETIC data: not medical images.</p>")
    out += [f"<p>{md_to_html(line)}</p>" for line in _summary_lines(report)]
    out.append("<h2>Images per class</h2><table><tr><th>class</th><th>labelled</th><th>ingested</th></tr>")
    out += [f"<tr><td>{esc(c)}</td><td>{before}</td><td>{after}</td></tr>" for c, before, after in _class_rows(report)]
    out.append("</table>")
    for status in ("quarantined", "ignored"):
        rows = report[f"{status}_files"]
        counts = ", ".join(f"{esc(code)} {n}" for code, n in report["reason_counts"][status].items()) or "none"
        out.append(f"<h2>{status.capitalize()} files ({len(rows)})</h2><p>{counts}</p>")
        if rows:
            out.append("<table><tr><th>file</th><th>code</th><th>reason</th></tr>")
            out += [
                f"<tr><td><code>{esc(r['relpath'])}</code></td><td>{esc(r['reason_code'])}</td>"
                f"<td>{esc(r['reason'])}</td></tr>"
                for r in rows[:MAX_TABLE_ROWS]
            ]
            if len(rows) > MAX_TABLE_ROWS:
                out.append(f"<tr><td colspan='3'>... {len(rows) - MAX_TABLE_ROWS} more in report.json</td></tr>")
            out.append("</table>")
    for heading, rendered in groups:
        out.append(f"<h2>{esc(heading)}</h2>")
        if rendered and rendered[0]["total"] > len(rendered):
            out.append(f"<p>first {len(rendered)} shown; all in report.json</p>")
        for group in rendered:
            out.append(
                "<div class='group'>"
                + "".join(
                    f"<div class='file'>{img_tag(f['thumb'], f['relpath'])}<br><code>{esc(f['relpath'])}</code><br>"
                    f"{esc(f['label'])} &middot; {esc(f['split'])} &middot; {esc(f['status'])}</div>"
                    for f in group["files"]
                )
                + "</div>"
            )
    out.append(f"<h2>Image sizes</h2><img src='{histogram}' alt='size histogram'><h2>Samples per class</h2>")
    for label, thumbs in samples.items():
        out.append(f"<h3>{esc(label)}</h3><div>" + "".join(img_tag(t, p) for p, t in thumbs) + "</div>")
    out.append("</body></html>")
    return "\n".join(out)
