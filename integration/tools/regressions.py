#!/usr/bin/env python3
"""Lists every regression test, with the defect it guards, into docs/results/regressions.md.

A regression test is found without the commit log:
  - Catch2 (tests/**/*.cc): tagged [regression], with a comment block right above its
    TEST_CASE whose first line starts with "// Regression:" and names the defect;
  - pytest (integration/**/test_*.py): a docstring line starting "Regression:";
  - Go (integration/**/*_test.go): a comment block right above `func Test...` whose first
    line starts with "// Regression:".
A [regression] tag without the comment, a "// Regression:" comment above a TEST_CASE without
the tag, or a pytest docstring mentioning "Regression:" other than at a line's start is an
error.

    integration/tools/regressions.py [REPO]           # rewrite docs/results/regressions.md
    integration/tools/regressions.py --check [REPO]   # exit 1 if it is not current (CI)
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

OUTPUT = Path("docs/results/regressions.md")
TEST_CASE = re.compile(r"^\s*TEST_CASE\s*\(")
GO_TEST = re.compile(r"^func (Test\w+)\(")


@dataclass
class Entry:
    file: str
    name: str
    defect: str


def comment_block_above(lines: list[str], index: int) -> list[str]:
    """The `//` lines right above lines[index], top first, without the slashes."""
    block = []
    i = index - 1
    while i >= 0 and lines[i].lstrip().startswith("//"):
        block.append(lines[i].lstrip()[2:].strip())
        i -= 1
    return list(reversed(block))


def defect_text(block: list[str]) -> str:
    text = " ".join(block)
    return re.sub(r"^Regression:\s*", "", text).strip()


def catch2(repo: Path, errors: list[str]) -> list[Entry]:
    entries = []
    for path in sorted((repo / "tests").rglob("*.cc")):
        lines = path.read_text(encoding="utf-8").split("\n")
        rel = path.relative_to(repo).as_posix()
        for i, line in enumerate(lines):
            if not TEST_CASE.match(line):
                continue
            # The macro's arguments: string literals up to the opening brace of the body.
            head = []
            for j in range(i, min(i + 12, len(lines))):
                head.append(lines[j])
                if "{" in lines[j]:
                    break
            literals = re.findall(r'"((?:[^"\\]|\\.)*)"', "\n".join(head))
            tags = [s for s in literals if re.fullmatch(r"(\[[^\]]*\])+", s)]
            name = "".join(s for s in literals if s not in tags)
            tagged = any("[regression]" in t for t in tags)
            block = comment_block_above(lines, i)
            commented = bool(block) and block[0].startswith("Regression:")
            where = f"{rel}:{i + 1}"
            if tagged and not commented:
                errors.append(f'{where}: TEST_CASE "{name}" is tagged [regression] but has no '
                              '"// Regression: <the defect>" comment line right above it')
            elif commented and not tagged:
                errors.append(f'{where}: TEST_CASE "{name}" has a "// Regression:" comment but '
                              "no [regression] tag")
            if tagged and commented:
                entries.append(Entry(rel, name, defect_text(block)))
    return entries


def pytest_tests(repo: Path, errors: list[str]) -> list[Entry]:
    entries = []
    for path in sorted((repo / "integration").rglob("test_*.py")):
        rel = path.relative_to(repo).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not node.name.startswith("test"):
                continue
            doc = ast.get_docstring(node) or ""
            doc_lines = doc.split("\n")
            starts = [k for k, l in enumerate(doc_lines) if l.strip().startswith("Regression:")]
            if not starts:
                if "Regression:" in doc:
                    errors.append(f"{rel}:{node.lineno}: {node.name}: \"Regression:\" must start "
                                  "a line of the docstring")
                continue
            # The defect: from "Regression:" to the end of that paragraph.
            para = []
            for l in doc_lines[starts[0]:]:
                if not l.strip():
                    break
                para.append(l.strip())
            entries.append(Entry(rel, node.name, defect_text(para)))
    return entries


def go_tests(repo: Path) -> list[Entry]:
    entries = []
    for path in sorted((repo / "integration").rglob("*_test.go")):
        lines = path.read_text(encoding="utf-8").split("\n")
        rel = path.relative_to(repo).as_posix()
        for i, line in enumerate(lines):
            m = GO_TEST.match(line)
            if not m:
                continue
            block = comment_block_above(lines, i)
            if block and block[0].startswith("Regression:"):
                entries.append(Entry(rel, m.group(1), defect_text(block)))
    return entries


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def section(title: str, entries: list[Entry], how: list[str], code_names: bool) -> list[str]:
    """One suite's table: the file, the test (a pytest or Go name in code), the defect."""
    rows = [f"| `{e.file}` | {f'`{e.name}`' if code_names else cell(e.name)} | {cell(e.defect)} |"
            for e in entries]
    return [f"## {title}: {len(entries)}", "", *how, "", "| file | test | defect |",
            "|---|---|---|", *rows, ""]


def render(unit: list[Entry], py: list[Entry], go: list[Entry]) -> str:
    out = ["# Regression tests",
           "",
           "Every test that guards a defect once found, with the defect. Generated by",
           "`integration/tools/regressions.py` from the tests themselves (a Catch2 test tagged",
           "`[regression]` with a `// Regression:` comment above it, a pytest whose docstring has a",
           "line starting `Regression:`, a Go test with a `// Regression:` comment); CI checks that",
           "this page is current (`integration/tools/check_docs.py`, in `integration/test-all.sh`'s",
           "format step). Do not edit it by hand: run `integration/tools/regressions.py`.",
           ""]
    out += section("Unit tests (Catch2)", unit,
                   ['All of them: `./build/tests/unit_tests "[regression]"`; one: '
                    '`./build/tests/unit_tests "NAME"`.'], code_names=False)
    out += section("Integration tests (pytest, real servers)", py,
                   ["One: `~/.cache/outbox-relay/venv/bin/python -m pytest FILE -k NAME`",
                    "(with `OUTBOX_IT_REQUIRE_BINARY=1 OUTBOX_RELAY_BIN=build/outbox-relay`)."],
                   code_names=True)
    out += section("Chart tests (Go)", go, ["Run by `integration/deploy/chart.sh`."],
                   code_names=True)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    repo = Path(args[0] if args else Path(__file__).resolve().parents[2])
    errors: list[str] = []
    text = render(catch2(repo, errors), pytest_tests(repo, errors), go_tests(repo))
    for e in errors:
        print(e)
    target = repo / OUTPUT
    if check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{OUTPUT} is not current: run integration/tools/regressions.py")
            return 1
        return 1 if errors else 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
