"""The client is a thin program: a CLI call must not pay for torch (seconds per call)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_the_client_imports_no_torch():
    # A fresh interpreter: this test process has torch loaded long since.
    probe = (
        "import sys, app.client.cli; "
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
