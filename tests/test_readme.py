"""The README's and the docs pages' Python examples run as written, and the docs site builds."""

import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

# The pages a reader is sent to from the README (the example reports are outputs, not instructions).
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_and_docs_python_blocks_run(tmp_path, monkeypatch):
    blocks = [(page, block) for page in PAGES for block in python_blocks(page)]
    assert len(blocks) >= 3  # the API, the LoRA core, the notebook's checks
    monkeypatch.chdir(tmp_path)
    for page, block in blocks:
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), {"__name__": "docs"})
    assert (tmp_path / "runs" / "my-adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "runs" / "api-lora-merged" / "model.safetensors").exists()


def test_the_readme_is_short_and_every_docs_page_is_in_the_site():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 12 * 1024
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not point to: {sorted(pages - linked)}"
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f": {name}" in nav for name in pages), "a docs page missing from mkdocs.yml's nav"


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (ROOT / ".venv" / "bin" / "mkdocs").exists(),
                    reason="MkDocs is not installed (pip install -e '.[docs]')")
def test_the_docs_site_builds_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "index.html").exists() and (tmp_path / "site" / "reliability" / "index.html").exists()
    assert "Nothing of yours is deleted" in (tmp_path / "site" / "index.html").read_text()
