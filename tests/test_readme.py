"""The README's example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert "b'hello'" in result.stdout and "[(0, 5)]" in result.stdout
