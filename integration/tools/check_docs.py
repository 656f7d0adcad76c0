#!/usr/bin/env python3
"""Checks the documentation's shape, without servers (run by integration/test-all.sh's format
step):
  - README.md is at most 10 KB (10,240 bytes): what the relay is, its promises, the two
    commands, links; the rest lives under docs/;
  - README.md gives the demo and the test command (the one .ci/run runs) as they are;
  - every page under docs/ is reachable from README.md by relative links between Markdown
    files;
  - every relative link of every Markdown file in the repository resolves: the file exists,
    and a #fragment names a heading of the target (as GitHub makes heading anchors);
  - docs/results/regressions.md is what integration/tools/regressions.py generates.

    integration/tools/check_docs.py [REPO]      # exit 0 when all hold, 1 with each problem
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README_MAX_BYTES = 10 * 1024
COMMANDS = ("./integration/demo.sh --events 5000", "./integration/test-all.sh")
SKIP_DIRS = {".git", "build", "node_modules", ".venv", "venv", "__pycache__"}

LINK = re.compile(r"(?<!\!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files(repo: Path) -> list[Path]:
    """The repository's Markdown files: git's list when it is a checkout, else a walk."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "--cached", "--others",
                              "--exclude-standard", "*.md"], check=True, capture_output=True,
                             text=True).stdout
        files = [repo / line for line in out.splitlines() if line]
        return sorted(f for f in files if f.is_file())
    except (OSError, subprocess.CalledProcessError):
        return sorted(p for p in repo.rglob("*.md")
                      if not any(part in SKIP_DIRS for part in p.relative_to(repo).parts))


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def strip_code_spans(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (hyphens and
    underscores kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        seen: dict[str, int] = {}
        names: set[str] = set()
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            m = HEADING.match(line)
            if not m:
                continue
            base = slug(m.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            names.add(base if count == 0 else f"{base}-{count}")
        cache[path] = names
    return cache[path]


def links(path: Path):
    """(line number, target) of each inline link in prose (not images' sources, not code)."""
    for n, line in prose_lines(path.read_text(encoding="utf-8")):
        for m in LINK.finditer(strip_code_spans(line)):
            yield n, m.group(1)


def is_external(target: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None


def check(repo: Path) -> list[str]:
    problems: list[str] = []
    readme = repo / "README.md"
    size = readme.stat().st_size
    if size > README_MAX_BYTES:
        problems.append(f"README.md: {size} bytes, more than {README_MAX_BYTES}: move sections "
                        "to docs/ and link them")
    text = readme.read_text(encoding="utf-8")
    for command in COMMANDS:
        if not re.search(r"^" + re.escape(command) + r"(\s|$)", text, re.M):
            problems.append(f"README.md: no line starting with the command `{command}`")

    cache: dict[Path, set[str]] = {}
    graph: dict[Path, set[Path]] = {}
    for md in markdown_files(repo):
        graph[md] = set()
        for line, target in links(md):
            if is_external(target):
                continue
            file_part, _, fragment = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md.resolve()
            where = f"{md.relative_to(repo)}:{line}"
            if not dest.exists():
                problems.append(f"{where}: link to {target}: no such file")
                continue
            if dest.suffix == ".md":
                graph[md].add(dest)
                if fragment and fragment not in anchors(dest, cache):
                    problems.append(f"{where}: link to {target}: no heading #{fragment} in "
                                    f"{dest.relative_to(repo.resolve())}")

    reached: set[Path] = set()
    todo = [readme.resolve()]
    resolved = {p.resolve(): p for p in graph}
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        todo.extend(graph.get(resolved.get(page, page), ()))
    docs = repo / "docs"
    for page in sorted(docs.rglob("*.md")) if docs.is_dir() else []:
        if page.resolve() not in reached:
            problems.append(f"{page.relative_to(repo)}: not reachable from README.md (link it "
                            "from docs/README.md)")

    generator = repo / "integration" / "tools" / "regressions.py"
    if generator.exists():
        run = subprocess.run([sys.executable, str(generator), "--check", str(repo)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            problems.append((run.stdout + run.stderr).strip())
    return problems


def main() -> int:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2])
    problems = check(repo)
    for p in problems:
        print(p)
    if problems:
        print(f"check_docs: {len(problems)} problem(s)")
        return 1
    pages = len(list((repo / "docs").rglob("*.md")))
    print(f"check_docs: README.md {(repo / 'README.md').stat().st_size} bytes; {pages} pages "
          "under docs/ reachable; every relative link resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
