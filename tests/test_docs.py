"""Every section citation in the repository resolves into docs/, and nothing points outside it.

A citation is `docs/<file>.md §N[.M]`, optionally continued in the same phrase by `, §N`, ` and §N`,
` or §N` or a range `–N`; external standards are cited as `RFC <number> §N`. Any other `§` is a
dangling citation, and so is a cited section whose heading (`## N.` / `### N.M`) the file lacks.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".venv"}

_SECTION = r"\d+(?:\.\d+)*"
# One cited section, then any continuation in the same phrase.
_STEP = r"(?: step \d+)?"
_CHAIN = (
    rf"§(?P<first>{_SECTION}){_STEP}"
    rf"(?P<rest>(?:(?:,\s*|\s+and\s+|\s+or\s+)§{_SECTION}{_STEP}|[–-]{_SECTION}(?![\w]))*)"
)
DOCS_CITATION = re.compile(rf"docs/(?P<file>[\w./-]+\.md) {_CHAIN}")
RFC_CITATION = re.compile(rf"RFC \d+ {_CHAIN}")
BARE_CITATION = re.compile(_CHAIN)
_SECTION_IN_REST = re.compile(rf"(?:§|[–-])({_SECTION})")
# References to documents outside the repository: the shared folder, and the old notes cited by
# the words "spec"/"design" and a section number. The examples below are built from parts so that a
# plain grep of the repository for these forms finds nothing.
FORBIDDEN = re.compile(
    "|".join(
        [
            r"\.\./shared",
            "/work/" + "shared",
            r"\b(?:spec|design),? (?:§|\d|open question|section)",
            r"(?<!docs/)\bdesign\.md",
            r"realtime-protocol\.md",
        ]
    ),
    re.IGNORECASE,
)


def _repository_files(root: Path) -> list[Path]:
    """The files git tracks or would track (untracked but not ignored); every file without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        paths = []
        for directory, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            paths += [Path(directory, name) for name in files]
        return paths
    return [root / name for name in listed.decode().split("\0") if name and (root / name).is_file()]


def _text_files(root: Path):
    for path in _repository_files(root):
        try:
            yield path, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files hold no citations


def _headings(doc: Path) -> set[str]:
    """The section numbers of `doc`'s headings: `## 3. Joining` → "3", `### 3.3 Join pipeline` → "3.3"."""
    found = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = re.match(rf"#{{1,6}} ({_SECTION})\.? ", line)
        if m:
            found.add(m.group(1))
    return found


def _check(citation: re.Match[str], doc: Path, root: Path) -> list[str]:
    if not doc.is_file():
        return [f"{citation.group(0)!r}: no file {doc.relative_to(root)}"]
    headings = _headings(doc)
    sections = [citation.group("first"), *_SECTION_IN_REST.findall(citation.group("rest"))]
    return [f"{citation.group(0)!r}: {doc.relative_to(root)} has no section {s}" for s in sections if s not in headings]


def problems(text: str, root: Path = ROOT, inside: Path | None = None) -> list[str]:
    """Dangling citations, stray `§` signs and forbidden references in `text`, as messages.

    `inside` is the docs file that `text` comes from: there a bare `§N` cites that same file."""
    out = [f"forbidden reference {m.group(0)!r}" for m in FORBIDDEN.finditer(text)]
    covered: set[int] = set()
    for m in RFC_CITATION.finditer(text):
        covered.update(range(m.start(), m.end()))
    for m in DOCS_CITATION.finditer(text):
        covered.update(range(m.start(), m.end()))
        out += _check(m, root / "docs" / m.group("file"), root)
    if inside is not None:
        for m in BARE_CITATION.finditer(text):
            if m.start() not in covered:
                covered.update(range(m.start(), m.end()))
                out += _check(m, inside, root)
    for i, char in enumerate(text):
        if char == "§" and i not in covered:
            line = text.count("\n", 0, i) + 1
            out.append(f"line {line}: '§' outside a docs/… or RFC citation: {text[max(0, i - 30) : i + 10]!r}")
    return out


def test_every_citation_in_the_repository_resolves():
    failures = []
    for path, text in _text_files(ROOT):
        if path.resolve() == Path(__file__).resolve():
            continue  # its examples below are dangling on purpose
        inside = path if path.parent == ROOT / "docs" else None
        failures += [f"{path.relative_to(ROOT)}: {p}" for p in problems(text, inside=inside)]
    assert not failures, "\n".join(failures)


def test_the_docs_exist_and_are_cited():
    cited = set()
    for path, text in _text_files(ROOT):
        if path.resolve() == Path(__file__).resolve():
            continue
        cited.update(m.group("file") for m in DOCS_CITATION.finditer(text))
    assert {"protocol.md", "design.md"} <= cited
    assert all((ROOT / "docs" / name).is_file() for name in cited)


@pytest.mark.parametrize(
    "text",
    [
        "see docs/protocol.md §3.3 step 12",
        "(docs/protocol.md §1.4, §3.5 and §8.1)",
        "docs/protocol.md §4.4–4.6",
        "docs/design.md §2: frame built once",
        "RFC 6455 §5.5.1 and §7",
    ],
)
def test_resolving_citations_pass(text):
    assert problems(text) == []


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("docs/protocol.md §42.1", "has no section 42.1"),
        ("docs/protocol.md §3.3, §3.99", "has no section 3.99"),
        ("docs/protocol.md §4.4–4.77", "has no section 4.77"),
        ("docs/design.md §9", "has no section 9"),
        ("docs/nowhere.md §1", "no file docs/nowhere.md"),
        ("the ids of §3.4", "outside a docs/"),
        ("as the spec" + " §3.3 says", "forbidden reference"),
        ("as the Spec" + " 3.3 says", "forbidden reference"),
        ("design" + " 2: frames built once", "forbidden reference"),
        ("(spec" + ", open question 3)", "forbidden reference"),
        ("design" + ".md section 2", "forbidden reference"),
        ("see realtime-" + "protocol.md", "forbidden reference"),
        ("see ../" + "shared/design.md", "forbidden reference"),
    ],
)
def test_dangling_citations_fail(text, complaint):
    found = problems(text)
    assert any(complaint in p for p in found), found


def test_a_docs_file_cites_its_own_sections_bare():
    protocol = ROOT / "docs" / "protocol.md"
    assert problems("as §3.3 step 6 says, and §6.5–6.7", inside=protocol) == []
    assert any("has no section 3.99" in p for p in problems("as §3.99 says", inside=protocol))
