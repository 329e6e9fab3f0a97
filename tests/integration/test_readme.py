"""The README's examples run as written."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_readme_opens_with_make_run_and_make_test():
    first = code_blocks("sh")[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make run", "make test"]


async def test_readme_sdk_example_runs(vcenter, tmp_path):
    (example,) = code_blocks("python")
    script = tmp_path / "example.py"
    script.write_text(example)
    env = {
        **os.environ,
        "VSIM_SERVER": vcenter.endpoint,
        "VSIM_THUMBPRINT": vcenter.thumbprint,
        "VSIM_PASSWORD": vcenter.core.sessions.initial_password(),
    }
    # The session's vCenter serves on this test's event loop: wait without blocking it.
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert any(line.startswith("sdk-01 esxi-") and line.endswith(" poweredOn") for line in lines)
