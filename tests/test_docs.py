"""The README and docs/ stay true: every relative link reaches a file (and heading), every command the README shows
names a script, benchmark, subcommand or experiment that exists, and no text is written twice."""
import glob
import os
import re

import pytest

from tests.helpers import REPO_ROOT

README = os.path.join(REPO_ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))
PAGES = [README] + DOCS
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
DUPLICATE_MIN_CHARS = 200  # a paragraph this long in two pages is a text written twice


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _rel(path):
    return os.path.relpath(path, REPO_ROOT)


def github_anchors(markdown):
    """The anchors GitHub gives the headings of a markdown text (code blocks skipped, `-1`, `-2` for repeats)."""
    anchors, seen = set(), {}
    for line in FENCE.sub("", markdown).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower().replace("`", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path):
    """(target file, anchor or None, link text as written) for every relative link outside code blocks."""
    links = []
    for target in LINK.findall(FENCE.sub("", _read(path))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        links.append((resolved, anchor or None, target))
    return links


@pytest.mark.parametrize("page", PAGES, ids=[_rel(p) for p in PAGES])
def test_relative_links_reach_a_file_and_heading(page):
    broken = []
    for target, anchor, written in relative_links(page):
        if not os.path.exists(target):
            broken.append(f"{written} (no file {_rel(target)})")
        elif anchor is not None:
            if not target.endswith(".md"):
                broken.append(f"{written} (an anchor into a file that is not markdown)")
            elif anchor not in github_anchors(_read(target)):
                broken.append(f"{written} (no heading #{anchor} in {_rel(target)})")
    assert not broken, f"{_rel(page)}: broken links: {broken}"


def test_the_readme_links_every_page_in_docs():
    linked = {target for target, _, _ in relative_links(README)}
    missing = [_rel(doc) for doc in DOCS if doc not in linked]
    assert not missing, f"README.md does not link {missing}"


def _ms_semiseg_commands():
    from ms_semiseg.cli import COMMANDS
    return set(COMMANDS)


def _convert_commands():
    from convert.cli import build_parser
    parser = build_parser("python -m convert")
    return set(next(a for a in parser._actions if a.dest == "command").choices)


def readme_command_problems(text):
    """What a README command names that does not exist: scripts, benchmarks, subcommands, experiment folders."""
    problems = []
    for script in re.findall(r"\bbash (scripts/[\w./-]+)", text):
        if not os.path.isfile(os.path.join(REPO_ROOT, script)):
            problems.append(f"bash {script}: no such file")
    for bench in re.findall(r"\bpython3? (bench/[\w./-]+)", text):
        if not os.path.isfile(os.path.join(REPO_ROOT, bench)):
            problems.append(f"python {bench}: no such file")
    for folder, script in re.findall(r"\bcd (experiments/[\w./-]+) && bash ([\w.-]+)", text):
        if not os.path.isfile(os.path.join(REPO_ROOT, folder, script)):
            problems.append(f"cd {folder} && bash {script}: no such file")
    for train_sh in re.findall(r"\bbash (experiments/[\w./-]+)", text):
        if not os.path.isfile(os.path.join(REPO_ROOT, train_sh)):
            problems.append(f"bash {train_sh}: no such file")
    commands = _ms_semiseg_commands()
    for sub in re.findall(r"(?:python3? -m ms_semiseg|\bms-semiseg) ([\w-]+)", text):
        if sub not in commands:
            problems.append(f"python -m ms_semiseg {sub}: no such command (have {sorted(commands)})")
    converter = _convert_commands()
    for sub in re.findall(r"(?:python3? -m convert|\bms-semiseg-convert|\bms-semiseg convert) ([\w-]+)", text):
        if sub not in converter:
            problems.append(f"python -m convert {sub}: no such command (have {sorted(converter)})")
    for config in re.findall(r"--config (experiments/[\w./-]+\.yaml)", text):
        if not os.path.isfile(os.path.join(REPO_ROOT, config)):
            problems.append(f"--config {config}: no such file")
    return problems


def test_readme_commands_name_what_exists():
    text = _read(README)
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text  # the quick start
    problems = readme_command_problems(text)
    assert not problems, problems


def test_the_command_check_catches_what_does_not_exist():
    bad = ("bash scripts/nope.sh; python bench/nope.py; python -m ms_semiseg nope; python -m convert nope; "
           "cd experiments/pascal/92/nope && bash eval.sh; --config experiments/nope/config.yaml")
    assert len(readme_command_problems(bad)) == 6
    good = ("bash scripts/demo.sh; python -m ms_semiseg export; python -m convert parity; "
            "cd experiments/pascal/92/ours && bash eval.sh")
    assert readme_command_problems(good) == []


def _paragraphs(path):
    """Blocks between blank lines, whitespace-normalised (code blocks are whole blocks)."""
    blocks = re.split(r"\n\s*\n", _read(path))
    return {" ".join(block.split()) for block in blocks if block.strip()}


def test_no_text_is_written_twice():
    seen, twice = {}, []
    for page in PAGES:
        for paragraph in _paragraphs(page):
            if len(paragraph) <= DUPLICATE_MIN_CHARS:
                continue
            if paragraph in seen:
                twice.append(f"{seen[paragraph]} and {_rel(page)}: {paragraph[:80]}...")
            else:
                seen[paragraph] = _rel(page)
    assert not twice, twice


def test_readme_is_a_front_page():
    assert len(_read(README).splitlines()) < 200


def test_the_robustness_table_can_be_rewritten_in_its_page():
    """`python -m tests.bad_inputs` replaces the table in docs/robustness.md: with the page's own rows it gives the
    page back unchanged, and the table holds every bad input."""
    from tests.bad_inputs import CASES, TABLE_DOC, TABLE_HEADER, replace_table
    text = _read(TABLE_DOC)
    lines = text.split("\n")
    start = lines.index(TABLE_HEADER)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert len(rows) >= len(CASES)
    assert replace_table(text, rows) == text
    assert replace_table(text, rows[:1]).count("\n") == text.count("\n") - (len(rows) - 1)
