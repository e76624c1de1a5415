"""The report rendered: the document (`loralab.report.document`) as Markdown, the Markdown
as one self-contained HTML page through markdown-it-py (CommonMark with tables), every
plot embedded as a data URI, and `write_report`, which writes both with the PNG plots.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from ..fileio import write_text
from .document import Bullets, Document, Image, Table, document
from .findings import Findings, build
from .plots import (
    plot_accuracy_vs_compute,
    plot_accuracy_vs_params,
    plot_accuracy_vs_rank,
    plot_confusion,
    plot_cost,
    plot_spectrum,
    plot_training_curves,
)

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
         "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
         "figure{margin:1.5em 0}figcaption{color:#555;font-size:90%}")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(table: Table) -> str:
    align = table.align or "l" * len(table.header)
    lines = ["| " + " | ".join(map(_cell, table.header)) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines)


def markdown(doc: Document) -> str:
    """The document as Markdown: each block a paragraph, list, table or image of its own."""
    out = [f"# {doc.title}"]
    for section in doc.sections:
        if section.title:
            out.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Table):
                out.append(markdown_table(block))
            elif isinstance(block, Bullets):
                if block.items:
                    out.append("\n".join(f"- {item}" for item in block.items))
            elif isinstance(block, Image):
                out.append(f"![{block.title}]({block.file})" if block.file else
                           f"{block.title}: no data (the runs it needs are missing).")
            else:
                out.append(block)
    return "\n\n".join(out) + "\n"


def to_html(text: str, folder: Path) -> str:
    """Markdown to one HTML page (markdown-it-py, CommonMark with tables), each image read
    from `folder` and embedded as a data URI: no network, one file."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(renderer, tokens, idx, options, env):
        token = tokens[idx]
        title = token.content
        data = base64.b64encode((folder / token.attrGet("src")).read_bytes()).decode()
        return (f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(title)}</figcaption></figure>")

    md.add_render_rule("image", image)
    body = md.render(text)
    # An image alone in a paragraph renders as a figure, not inside <p>.
    body = body.replace("<p><figure>", "<figure>").replace("</figure></p>", "</figure>")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>loralab study report</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def write_plots(f: Findings, report_dir: Path) -> dict[str, bool]:
    """The PNG plots of the findings; returns which were made (a plot without data is not)."""
    made = {
        "accuracy_vs_params.png": plot_accuracy_vs_params(f.summaries, report_dir / "accuracy_vs_params.png"),
        "accuracy_vs_rank.png": plot_accuracy_vs_rank(f.summaries, report_dir / "accuracy_vs_rank.png"),
        "training_curves.png": plot_training_curves(f.summaries, report_dir / "training_curves.png"),
        "cost.png": plot_cost(f.summaries, report_dir / "cost.png"),
        "accuracy_vs_compute.png": plot_accuracy_vs_compute(
            f.summaries, {s.method: s.token_passes for s in f.searches}, report_dir / "accuracy_vs_compute.png"),
        "confusion.png": plot_confusion([s for s in (f.full, f.best_lora) if s and s.row.confusion], f.labels,
                                        report_dir / "confusion.png"),
    }
    if f.spectrum:
        plot_spectrum(f.spectrum, report_dir / "spectrum.png", "Fine-tuning update dW per layer")
    made["spectrum.png"] = bool(f.spectrum)
    return made


# Every file a report writes (a suite's report writes the first two and results.json).
REPORT_FILES = ("report.md", "report.html", "accuracy_vs_params.png", "accuracy_vs_rank.png", "training_curves.png",
                "cost.png", "confusion.png", "spectrum.png", "accuracy_vs_compute.png")


def write_report(out_dir: str | os.PathLike, report_dir: str | os.PathLike | None = None, *,
                 overwrite: bool = False) -> Path:
    """Write report.md, report.html and the PNG plots for the study in `out_dir`:
    findings -> document -> Markdown -> HTML.

    `report_dir` (default: `out_dir`) is a new or empty folder, a study's, or one a report
    was written to; `overwrite` lets it be a folder of the user's, whose files are never
    written over (`loralab.outputs`)."""
    from ..outputs import check_output, claim_folder

    out_dir = Path(out_dir)
    report_dir = check_output(report_dir or out_dir, "report", overwrite=overwrite, flag="--report-dir")
    claim_folder(report_dir, "report", REPORT_FILES)
    findings = build(out_dir)
    text = markdown(document(findings, write_plots(findings, report_dir)))
    write_text(report_dir / "report.md", text)
    write_text(report_dir / "report.html", to_html(text, report_dir))
    return report_dir / "report.md"


def write_lowrank(finetuned, headtuned, pretrained, out: str | os.PathLike, *, overwrite: bool = False,
                  lora_dirs: tuple = (), **options):
    """`loralab lowrank`: the low-rank study of one fine-tune (`loralab.api.lowrank`, with
    `options`) written into `out` with its spectrum plot, after `out` is checked: a new
    folder, or one `loralab lowrank` wrote (`overwrite`: beside the user's files), none of
    the inputs inside it.

    Returns:
        `api.lowrank`'s (rows, summary).
    """
    from ..api import lowrank
    from ..lowrank import read_spectrum
    from ..models import local_folder
    from ..outputs import check_output, claim_folder
    from ..records import read_json

    inputs = [("--finetuned", finetuned), ("--headtuned", headtuned), ("--pretrained", local_folder(pretrained)),
              *(("--lora", d) for d in lora_dirs)]
    folders = [(flag, p) for flag, p in inputs if isinstance(p, (str, os.PathLike))]  # not models in memory
    check_output(out, "lowrank", overwrite=overwrite, inputs=folders)
    claim_folder(out, "lowrank", ("lowrank.json", "spectrum.json", "spectrum.png"))
    rows, summary = lowrank(finetuned, headtuned, pretrained, out=out, lora_dirs=tuple(lora_dirs), **options)
    spectrum = read_spectrum(read_json(Path(out) / "spectrum.json"))
    plot_spectrum(spectrum, Path(out) / "spectrum.png", "Fine-tuning update dW per layer")
    return rows, summary
