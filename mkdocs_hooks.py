"""MkDocs hook: the site's home page is README.md, its links moved from the repository's root
into docs/ (so the README is written once and read in both places)."""

import re
from pathlib import Path

from mkdocs.structure.files import File


def _relink(text: str) -> str:
    def fix(match: re.Match) -> str:
        target = match.group(1)
        if target.startswith(("http:", "https:", "#", "mailto:")):
            return match.group(0)
        return f"]({target[5:] if target.startswith('docs/') else '../' + target})"

    return re.sub(r"\]\(([^)]+)\)", fix, text)


def on_files(files, config):
    readme = Path(config["config_file_path"]).parent / "README.md"
    files.append(File.generated(config, "index.md", content=_relink(readme.read_text("utf-8"))))
    return files
