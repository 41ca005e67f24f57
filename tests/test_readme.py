"""The README's example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _run(block: str) -> str:
    # A fresh process compiles the kernels an example uses unless Numba's cache has them for
    # this package's sources and kinds: minutes on a loaded machine after any change.
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                            timeout=900, cwd="/tmp")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readme_python_examples_run():
    virtqueue, net_backend, ports, hosts, block = re.findall(r"```python\n(.*?)```",
                                                             README.read_text(), flags=re.S)
    out = _run(virtqueue)
    assert "b'hello'" in out and "[(0, 5)]" in out
    # With no front-end connected the loop finds nothing to move, and says so.
    assert "NetCounters(rx_frames=0" in _run(net_backend)
    assert _run(ports).splitlines() == ["2", "[b'frame one', b'frame two']"]
    assert _run(hosts).strip() == "True"
    assert _run(block).splitlines() == ["b'block I/O'", "True 0 True"]
