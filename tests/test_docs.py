"""The README and docs/ agree with the repository: every path they name exists, every relative link resolves,
and the README's performance figures are those of benchmarks/RESULTS.md and of
benchmarks/results/serving_real.json."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
# Directories and files at the top of the repository whose paths the pages name. Other paths in backticks
# (`runs/sst2`, `saved_models/sst2/1`, `assets/vocab.txt`) are examples of what kbert writes, not files here.
REPOSITORY_DIRECTORIES = ("kbert", "tests", "benchmarks", "recipes", "tools", "docs", ".ci", "saved_models")
REPOSITORY_FILES = ("README.md", "pyproject.toml")
# Written by a benchmark run and ignored by git.
GENERATED = {"benchmarks/results/all.json"}


def _prose(text):
    """`text` without its fenced code blocks (their `#` lines are comments, not headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _exists(relative):
    if relative in GENERATED:
        return True
    if "*" in relative:
        return any(ROOT.glob(relative))
    path = ROOT / relative
    return path.is_dir() if relative.endswith("/") else path.exists()


def _is_repository_path(token):
    if "<" in token:  # a template such as kbert/tasks/<name>.py, not a file
        return False
    first = token.split("/")[0]
    if "/" in token:
        return first in REPOSITORY_DIRECTORIES and first != "saved_models"
    return token in REPOSITORY_FILES


def backticked_paths(text):
    """Repository paths in backticks: the first word of each code span (`recipes/glue.sh INIT`)."""
    paths = []
    for span in re.findall(r"`([^`\n]+)`", _prose(text)):
        token = span.split()[0].rstrip(",.:;)") if span.split() else ""
        if _is_repository_path(token):
            paths.append(token)
    return paths


def _module_file(dotted):
    """The file of module `dotted` (`kbert.data.sources`), or None."""
    base = ROOT.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def missing_names(text):
    """`python -m MODULE` commands whose module is missing, and `kbert.NAME...` references (in backticks) that
    name no module of kbert, or an attribute its module does not mention."""
    missing = [module for module in re.findall(r"python -m ((?:kbert|benchmarks|tools)[\w.]*)", text)
               if _module_file(module) is None]
    for span in re.findall(r"`([^`\n]+)`", _prose(text)):
        match = re.match(r"(kbert(?:\.\w+)+)", span)
        if match is None:
            continue
        parts = match.group(1).split(".")
        # The longest prefix that is a module; the next part must be defined or imported in it.
        for end in range(len(parts), 0, -1):
            module = _module_file(".".join(parts[:end]))
            if module is not None:
                break
        if end < len(parts) and not re.search(rf"\b{parts[end]}\b", module.read_text("utf-8")):
            missing.append(match.group(1))
    return missing


def layout_paths(text):
    """Every path of the README's layout block: each entry, and the files its description names."""
    match = re.search(r"^## Layout\n.*?^```\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    if match is None:
        return []
    paths = []
    top = entry = None
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= 2:
            name, _, description = line.strip().partition(" ")
            if indent == 0:
                top = name if name.endswith("/") else None
                entry = name
            else:
                entry = (top or "") + name
            paths.append(entry)
        else:
            description = line
        # Files a directory's description lists (`data/  sources.py ...`) lie in that directory; a path with a
        # slash (`kbert/commands/`, `tools/`) is from the root.
        for token in re.findall(r"[\w./-]+", description):
            token = token.rstrip(".,:;")
            if "/" in token:
                if _is_repository_path(token):
                    paths.append(token)
            elif entry.endswith("/") and re.fullmatch(r"[\w-]+\.(py|md|json|sh|txt)", token):
                paths.append(entry + token)
    return paths


def _slug(heading):
    """GitHub's anchor for a heading."""
    heading = re.sub(r"[`*_\[\]()]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(path):
    return {_slug(heading) for heading in re.findall(r"^#+ (.+)$", _prose(path.read_text("utf-8")), re.MULTILINE)}


def broken_links(page, text):
    """Relative markdown links of `page` that resolve to no file, or to no heading of the file."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(text)):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_path_a_page_names_exists(page):
    text = page.read_text("utf-8")
    named = backticked_paths(text) + layout_paths(text)
    assert [path for path in named if not _exists(path)] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_module_and_kbert_name_a_page_names_exists(page):
    assert missing_names(page.read_text("utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page, page.read_text("utf-8")) == []


def test_the_readme_layout_is_read():
    paths = layout_paths((ROOT / "README.md").read_text("utf-8"))
    for path in ("kbert/", "kbert/export.py", "kbert/data/sources.py", "kbert/convert/mapping.py",
                 "kbert/commands/", "tools/serving_runtimes.py", "benchmarks/run_all.py", ".ci/run"):
        assert path in paths


def test_every_kbert_module_is_in_the_readme_layout():
    paths = set(layout_paths((ROOT / "README.md").read_text("utf-8")))
    modules = {
        f"kbert/{path.name}" + ("/" if path.is_dir() else "")
        for path in (ROOT / "kbert").iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path.is_dir() and path.name != "__pycache__")
    }
    assert sorted(modules - paths) == []


def test_a_missing_path_or_link_is_reported(tmp_path):
    text = (
        "Run `recipes/glue.sh INIT` and read `kbert/no_such_module.py` and `tests/test_nothing_*.py`; "
        "`runs/sst2` is output. See [data](docs/data.md#data-and-tokenizer), [gone](docs/gone.md), "
        "[no heading](docs/data.md#no-such-heading), [web](https://example.com/x.md).\n\n"
        "## Layout\n\n```\nkbert/     the library\n  export.py    export\n  gone.py      gone\n"
        "  data/        sources.py, missing.py\n```\n"
    )
    named = backticked_paths(text) + layout_paths(text)
    assert [path for path in named if not _exists(path)] == [
        "kbert/no_such_module.py", "tests/test_nothing_*.py", "kbert/gone.py", "kbert/data/missing.py",
    ]
    assert broken_links(ROOT / "README.md", text) == ["docs/gone.md", "docs/data.md#no-such-heading"]
    names = "`kbert.data.sources.without_autotuning`, `kbert.no_such_function(x)`, `kbert.gone.f`; " \
        "python -m benchmarks.run_all, python -m benchmarks.gone"
    assert missing_names(names) == ["benchmarks.gone", "kbert.no_such_function", "kbert.gone.f"]


def _figures(text):
    return {float(number.replace(",", "")) for number in re.findall(r"\d[\d,]*(?:\.\d+)?", text)}


def test_the_readme_performance_figures_are_those_of_the_results_file():
    readme = (ROOT / "README.md").read_text("utf-8")
    section = re.search(r"^## Performance\n(.*?)^## ", readme, flags=re.MULTILINE | re.DOTALL).group(1)
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    quoted = _figures("\n".join(re.sub(r"^\|[^|]*\|", "", row) for row in rows))
    assert rows and quoted
    assert sorted(quoted - _figures((ROOT / "benchmarks" / "RESULTS.md").read_text("utf-8"))) == []


def _rounded_figures(value, digits=3):
    """Every number in a JSON value, rounded to `digits` significant digits."""
    if isinstance(value, dict):
        return set().union(*map(_rounded_figures, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_rounded_figures, value)) if value else set()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
        return {float(f"{value:.{digits}g}")}
    return set()


def test_the_readme_real_size_figures_are_those_of_the_serving_results():
    readme = (ROOT / "README.md").read_text("utf-8")
    section = re.search(
        r"^## Against PyTorch and ONNX Runtime\n(.*?)^## ", readme, flags=re.MULTILINE | re.DOTALL
    ).group(1)
    rows = [line for line in section.splitlines() if line.startswith("| ") and "texts/s |" not in line]
    quoted = _figures("\n".join(re.sub(r"^\|[^|]*\|", "", row) for row in rows))
    assert rows and quoted
    results = json.loads((ROOT / "benchmarks" / "results" / "serving_real.json").read_text("utf-8"))
    (news,) = [report for report in results["results"] if report["model"] == "minilm" and report["texts"] == "news"]
    measured = _rounded_figures(
        [{key: row[key] for key in ("batch_1_p50_ms", "batch_64_texts_per_second")} for row in news["rows"]]
    )
    assert sorted(quoted - measured) == []
