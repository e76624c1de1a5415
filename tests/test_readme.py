"""The README's Python examples run as written."""

import re

from conftest import ROOT


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "my-adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "runs" / "api-lora-merged" / "model.safetensors").exists()
