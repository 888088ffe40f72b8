"""The leakage audit's part of a run report (metrics.json's `leakage` entry, written by `prepare`'s audit): a table
of duplicated rows per pair of splits and a few examples, as an HTML fragment for the report's trust section."""

from __future__ import annotations

import html


def leakage_html(metrics: dict) -> str:
    """An HTML fragment (a table, then examples) of metrics.json's `leakage` entry; empty when the run has none."""
    audits = metrics.get("leakage") or {}
    if not audits:
        return ""
    esc = lambda value: html.escape(str(value))  # noqa: E731
    head = "".join(f"<th>{name}</th>" for name in ("splits", "rows compared", "exact", "near", "share of later"))
    body, examples = [], []
    for pair, entry in audits.items():
        earlier, later = pair.split("/", 1)
        first, second = entry["compared"]
        share = (entry["exact"] + entry["near"]) / max(second, 1)
        cells = [pair, f"{first:,} {earlier} / {second:,} {later}", entry["exact"], entry["near"], f"{share:.1%}"]
        body.append("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in cells) + "</tr>")
        for example in entry.get("examples", []):
            (later_row, later_text), (earlier_row, earlier_text) = example[later], example[earlier]
            kind = example["kind"] + ("" if example["kind"] == "exact" else f", Jaccard {example['similarity']:.2f}")
            examples.append(
                f"<li>{esc(pair)} ({esc(kind)}, {esc(example['field'])}): {esc(later)} row {later_row + 1} "
                f"<q>{esc(later_text)}</q> ~ {esc(earlier)} row {earlier_row + 1} <q>{esc(earlier_text)}</q></li>"
            )
    parts = [
        "<p>Rows of a later split that also appear in an earlier one: exact after normalisation (case, "
        "whitespace, punctuation), or near (word-bigram Jaccard at least 0.8). Scores on leaked rows overstate "
        "what the model does on new data.</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>",
    ]
    if examples:
        parts.append("<p>Examples (normalised text):</p><ul>" + "".join(examples) + "</ul>")
    return "\n".join(parts)
