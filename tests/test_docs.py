"""The docs say what the code does: USAGE and options come from the parser."""

import re
import subprocess

from helpers import ENV, REPO, needs_tracing, piobpf_cmd


def help_text():
    out = subprocess.run(piobpf_cmd("-h"), env=dict(ENV, COLUMNS="80"),
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_examples_file_ends_with_the_current_usage():
    text = (REPO / "man" / "piobpf_example.txt").read_text()
    assert text.endswith("# piobpf -h\n" + help_text())


def options_in(text):
    return set(re.findall(r"(?<![\w-])(-[a-z]|--[a-z]{2,}[a-z-]*)(?![\w-])", text))


def test_options_in_readme_and_man_page_exist():
    known = options_in(help_text())
    readme = (REPO / "README.md").read_text()
    use = readme[readme.index("## Use"):readme.index("Formats:")]
    man = (REPO / "man" / "piobpf.8").read_text().replace("\\-", "-")
    options = man[man.index(".SH SYNOPSIS"):man.index(".SH FIELDS")]
    assert options_in(use) - known == set()
    assert options_in(options) - known == set()
    assert {"-d", "-i", "-n", "--format", "-o"} <= options_in(use) & options_in(options)


@needs_tracing
def test_demo_shows_serial_on_top():
    out = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo: OK" in out.stderr
