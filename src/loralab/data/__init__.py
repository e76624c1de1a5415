"""Data: files read and checked (`files`), the splits a command works on (`splits`), and
the IMDB lab sample with its download (`imdb`). Everything public is importable from here."""

from .files import (
    FORMATS,
    LABEL_VALUES,
    DataOptions,
    check_classes,
    class_counts,
    class_names_of,
    expand_files,
    is_regression,
    label_ids,
    label_names,
    load_file,
    load_split,
    raw_label,
    raw_labels,
    raw_targets,
)
from .imdb import IMDB_URL, LAB_FILES, cache_dir, download_lab_sample, resolve_data_dir
from .splits import (
    data_digest,
    data_options,
    limit_data,
    load_configured,
    load_data,
    split_validation,
    texts_of,
    warn_overlap,
)

__all__ = [
    "FORMATS", "IMDB_URL", "LABEL_VALUES", "LAB_FILES", "DataOptions", "cache_dir", "check_classes", "class_counts",
    "class_names_of", "data_digest", "data_options", "download_lab_sample", "expand_files", "is_regression",
    "label_ids", "label_names", "limit_data", "load_configured", "load_data", "load_file", "load_split", "raw_label",
    "raw_labels", "raw_targets", "resolve_data_dir", "split_validation", "texts_of", "warn_overlap",
]
