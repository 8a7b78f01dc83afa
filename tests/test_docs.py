"""The docs say what the code does: options come from the parser, links
resolve, the README stays a front door, the man page agrees with docs/."""

import re
import subprocess

from helpers import ENV, REPO, needs_tracing, piobpf_cmd

README = REPO / "README.md"
DOCS = REPO / "docs"
MAN = REPO / "man" / "piobpf.8"
README_MAX_LINES = 250
# An option as --help and the docs spell it: -d, --map-size, --web.config.file.
OPTION = r"(?<![\w.-])(-[a-z]|--[a-z][a-z.-]*[a-z])(?![\w-])"


def help_text():
    out = subprocess.run(piobpf_cmd("-h"), env=dict(ENV, COLUMNS="80"),
                         capture_output=True, text=True, check=True)
    return out.stdout


def help_options():
    """Every spelling of every option the parser takes: `-d`, `--duration`..."""
    text = help_text()
    listed = text[text.index("\noptions:"):text.index("\nexamples:")]
    # An option's line starts with its spellings and their metavars, then
    # two spaces or a line break before the help.
    return {o for line in re.findall(r"^  (-.*)$", listed, re.M)
            for o in options_in(line.split("  ")[0])}


def options_in(text):
    return set(re.findall(OPTION, text))


def section(text, start, end):
    return text[text.index(start):text.index(end, text.index(start))]


def man_text():
    return MAN.read_text().replace("\\-", "-")


def usage_options_table():
    return section((DOCS / "usage.md").read_text(), "## Options", "\n## ")


def man_options():
    return section(man_text(), ".SH OPTIONS", ".SH KEYS")


def markdown_files():
    return [README, REPO / "bench" / "README.md", *sorted(DOCS.glob("*.md"))]


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S),
                          re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_examples_file_ends_with_the_current_usage():
    text = (REPO / "man" / "piobpf_example.txt").read_text()
    assert text.endswith("# piobpf -h\n" + help_text())


def test_help_lists_the_options_it_should():
    # The parse of --help itself: a parse that found nothing would pass the rest.
    assert {"-d", "--duration", "-p", "--pid", "--map-size", "--web.config.file",
            "--compare", "-h", "--help"} <= help_options()


def test_every_option_is_documented_in_usage_and_man_page():
    known = help_options()
    assert known - options_in(usage_options_table()) == set()
    assert known - options_in(man_options()) == set()


def test_documented_options_exist():
    known = help_options()
    readme_commands = "\n".join(re.findall(r"^(?:# |sudo )?piobpf .*$", README.read_text(), re.M))
    usage = (DOCS / "usage.md").read_text()
    documented = {
        "README's commands": options_in(readme_commands),
        "docs/usage.md's synopsis and options": options_in(section(usage, "## Synopsis", "\n## "))
        | options_in(usage_options_table()),
        "the man page's synopsis and options": options_in(section(man_text(), ".SH SYNOPSIS",
                                                                  ".SH KEYS")),
    }
    assert {"-d", "--by", "--latency"} <= documented["README's commands"]
    for where, options in documented.items():
        assert options - known == set(), where


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for command in ("scripts/setup.sh", "scripts/test.sh", "scripts/demo.sh"):
        assert f"sudo {command}" in text
        assert (REPO / command).is_file()
    # Every page of the manual is linked from the front door.
    linked = set(re.findall(r"\]\(([^)#]+)", text))
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages - linked == set()
    assert "bench/README.md" in linked
    # It is the package's long description too.
    assert "long_description = file: README.md" in (REPO / "setup.cfg").read_text()


def test_links_resolve():
    broken = []
    for md in markdown_files():
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists() or anchor and (dest.suffix != ".md"
                                                or anchor not in anchors(dest)):
                broken.append(f"{md.relative_to(REPO)}: {target}")
    assert broken == []


def test_man_fields_are_the_documented_columns():
    man = section(man_text(), ".SH FIELDS", ".SH OVERHEAD")
    in_man = set(re.findall(r"^\.TP\n(\S+)\n", man, re.M))
    fields = section((DOCS / "fields.md").read_text(), "## Columns", "\n## ")
    in_docs = set(re.findall(r"^\| (\S+) \|", fields, re.M)) - {"column", "---"}
    assert {"DIR", "PORT", "DEVICE", "EVENTS", "TIME"} <= in_man
    assert in_man == in_docs


def test_man_overhead_figures_are_in_the_overhead_doc():
    man = section(man_text(), ".SH OVERHEAD", ".SH SOURCE")
    overhead = (DOCS / "overhead.md").read_text()
    figures = set(re.findall(r"\d+\.\d+|\d{3,}", man)) - {"2026"}
    assert len(figures) > 10
    assert {f for f in figures if not re.search(rf"(?<![\d.]){re.escape(f)}", overhead)} == set()


@needs_tracing
def test_demo_shows_serial_on_top():
    out = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo: OK" in out.stderr
