"""`loralab run`, the study as one resumable job: its configuration (`config`), its runs and
their keys (`plan`), what each kind of run does (`tasks`), the records it writes
(`records`), and the runner that skips finished runs and does the rest (`runner`)."""

from ..config import defaults, inside, load_config, to_toml
from ..records import (
    RESULT_NAME,
    Environment,
    Extracted,
    LowrankSummary,
    ReplaceTest,
    Row,
    RunRecord,
    Selection,
    fingerprint,
    read_record,
    read_rows,
)
from .executors import warm_up_processes
from .plan import Context, Ref, Run, plan, resolved_precision, seeds_of
from .runner import StudyResult, run_study, summary_table

__all__ = [
    "RESULT_NAME", "Context", "Environment", "Extracted", "LowrankSummary", "Ref", "ReplaceTest", "Row", "Run",
    "RunRecord", "Selection", "StudyResult", "defaults", "fingerprint", "inside", "load_config", "plan",
    "read_record", "read_rows", "resolved_precision", "run_study", "seeds_of", "summary_table", "to_toml",
    "warm_up_processes",
]
