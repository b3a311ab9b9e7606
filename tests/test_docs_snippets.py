"""Every ```python block of README.md and docs/*.md runs.

Convention: README blocks are independent; the blocks of one docs/ page run in order in one namespace (a page is a
walk-through). Each file runs in its own Python process, in a folder holding the datasets the snippets name
(``./relight-pairs``, a full build, and ``./relight-pairs-compact``), with the listed substitutions: the
placeholder photo folder becomes the fixtures, sizes and loops shrink to CPU-test scale, ``cuda`` becomes ``cpu``.
A substitution whose text is no longer in the docs fails the test, so the table cannot rot silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMON_SUBSTITUTIONS = {"/path/to/portraits": "{faces}"}
"""Wherever they appear: placeholders -> what the test uses."""
SUBSTITUTIONS = {
    "README.md": {
        "resolution=512, seed=0,": "resolution=96, seed=0,",
        '"resolution=512", "segmentation.method=classical"': '"resolution=96", "segmentation.method=classical"',
        'glob("*.png"))': 'glob("*.png"))[:2]',
        'limit=100,\n                       overrides=("resolution=512",)':
            'limit=2,\n                       overrides=("resolution=96",)',
        "PairedTransform(512)": "PairedTransform(64)",
        "batch_size=8, shuffle=True, num_workers=2": "batch_size=2, shuffle=True, num_workers=0",
        "for epoch in range(3):": "for epoch in range(2):",
    },
    "docs/training.md": {
        "PairedTransform(512)": "PairedTransform(64)",
        "batch_size=8, shuffle=True, num_workers=4, persistent_workers=True":
            "batch_size=2, shuffle=True, num_workers=0",
        "batch_size=32, shuffle=True, num_workers=8, pin_memory=True": "batch_size=2, shuffle=True, num_workers=0",
        "epochs = 10": "epochs = 2",
        'device="cuda"': 'device="cpu"',
    },
}
"""Per file: text in the docs -> what the test runs instead (all must be found)."""
DOCUMENTS = ["README.md", *sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md"))]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, faces_dir) -> Path:
    folder = tmp_path_factory.mktemp("snippets")
    for name, flags in (("relight-pairs", []), ("relight-pairs-compact", ["--layout", "compact"])):
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "build.py"), "--source", f"folder:{faces_dir}",
                                 "--limit", "4", "--resolution", "96", "--out", str(folder / name), "--quiet",
                                 "--segmenter", "classical", "--normals", "classical", *flags],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    return folder


def test_every_document_with_python_is_covered():
    with_code = [name for name in DOCUMENTS if python_blocks((REPO / name).read_text())]
    assert set(with_code) <= {"README.md", *SUBSTITUTIONS}, "a new page has python blocks: add it to SUBSTITUTIONS"


@pytest.mark.parametrize("document", [name for name in DOCUMENTS if python_blocks((REPO / name).read_text())])
def test_the_python_blocks_run(document, workdir, faces_dir):
    text = (REPO / document).read_text()
    for old, new in SUBSTITUTIONS.get(document, {}).items():
        assert old in text, f"{document}: the test substitutes {old!r}, which is gone: update SUBSTITUTIONS"
        text = text.replace(old, new)
    for old, new in COMMON_SUBSTITUTIONS.items():
        text = text.replace(old, new.format(faces=faces_dir))
    blocks = python_blocks(text)
    shared = document != "README.md"
    script = ["import sys", "namespace = {}"]
    for index, block in enumerate(blocks):
        script.append(f"namespace = namespace if {shared} else {{}}")
        script.append(f"exec(compile({block!r}, '{document} block {index + 1}', 'exec'), namespace)")
        script.append(f"print('ok {index + 1}', flush=True)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(workdir / "datasets-cache")}
    result = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=workdir, capture_output=True, text=True,
                            timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ok ") == len(blocks)
