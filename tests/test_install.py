"""scripts/setup.sh puts `piobpf` on root's PATH; it must work from anywhere."""

import json
import shutil
import subprocess

from helpers import needs_tracing


@needs_tracing
def test_installed_command_traces_from_any_directory():
    exe = shutil.which("piobpf", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
    assert exe, "piobpf is not on PATH: run scripts/setup.sh"
    out = subprocess.run([exe, "-d", "0.2", "--format", "json"], cwd="/",
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) == {"duration_s", "total_events", "dropped_events", "rows"}
