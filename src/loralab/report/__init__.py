"""The report of a study, in layers: the findings, every number it states, computed from
the output folder's records (`findings`); the document, its sections, sentences and tables
(`document`); and its rendering as Markdown, a self-contained HTML page and PNG plots
(`render`, `plots`)."""

from .document import Document, Table, answers, document, extraction_lines, results_table, selection_lines
from .findings import Findings, RunTime, Summary, aggregate, build, busy_seconds
from .render import markdown, to_html, write_report

__all__ = ["Document", "Findings", "RunTime", "Summary", "Table", "aggregate", "answers", "build", "busy_seconds",
           "document", "extraction_lines", "markdown", "results_table", "selection_lines", "to_html", "write_report"]
