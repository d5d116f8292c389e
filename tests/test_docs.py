"""The manual and the README as a user meets them: the site builds with ``mkdocs build --strict``
(broken links, anchors and pages fail it) without importing the package; every Python block a page
marks runnable runs against a small demo run; README's ``genre-*`` command lines name console
scripts and overrides that compose; README's relative links point to files that exist.

Runnable blocks: a ```` ```python ```` block of a page in docs/ whose previous non-blank line is
``<!-- run -->``, and README's first ```` ```python ```` block after its "## Python API" heading
(the one .ci/wheel-check runs against the installed wheel). They run in a folder laid out as after
the quick start (``outputs/demo/runs/<run>/``, ``outputs/demo_posters/``)."""

from __future__ import annotations

import contextlib
import html as html_module
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from markdown.extensions.toc import slugify

from genre_lightning.cli.common import CONFIG_MODULE
from tests.helpers.cli import run_entry_point
from tests.helpers.paths import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

README = REPO / "README.md"
DOCS = REPO / "docs"
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
RUN_MARKER = "<!-- run -->"


def readme_api_block() -> str:
    """README's Python API block, found as .ci/wheel-check finds it."""
    readme = README.read_text()
    return PYTHON_BLOCK.search(readme[readme.index("## Python API") :]).group(1)


def runnable_blocks() -> list[pytest.param]:
    blocks = [pytest.param(readme_api_block(), id="README.md:python-api")]
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for number, match in enumerate(re.finditer(r"```python\n(.*?)```", text, re.S)):
            before = text[: match.start()].rstrip().splitlines()
            if before and before[-1].strip() == RUN_MARKER:
                blocks.append(pytest.param(match.group(1), id=f"{page.name}:{number}"))
    return blocks


@pytest.mark.slow  # a few seconds on a quiet machine, 10-15 s on a busy one
def test_the_site_builds_strictly_without_importing_the_package(tmp_path: Path):
    """``mkdocs build --strict`` as CI runs it; the API reference is rendered from the docstrings
    (read from the source, so the build imports neither genre_lightning nor torch)."""
    site = tmp_path / "site"
    build = (
        "import json, sys\n"
        "from mkdocs.__main__ import cli\n"
        "try:\n"
        f"    cli(['build', '--strict', '--quiet', '--site-dir', {str(site)!r}], standalone_mode=False)\n"
        "finally:\n"
        "    print(json.dumps(sorted(m for m in ('genre_lightning', 'torch') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", build], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], "the docs build imported the package"
    for page in DOCS.glob("*.md"):
        html = site / "index.html" if page.name == "index.md" else site / page.stem / "index.html"
        assert html.is_file(), f"{page.name} is not in the site"
    # The API page holds the docstrings as they stand in the source.
    from genre_lightning.inference.predictor import Predictor

    def words(text: str) -> str:
        return " ".join(re.findall(r"\w+", text))

    api = words(html_module.unescape(re.sub(r"<[^>]+>", " ", (site / "api" / "index.html").read_text())))
    for docstring in (Predictor.__doc__, Predictor.from_checkpoint.__doc__):
        opening = " ".join(words(docstring).split()[:8])
        assert opening in api, f"the API page lacks {opening!r}"


@pytest.fixture(scope="module")
def quick_start_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as the quick start leaves it: ``genre-train experiment=demo`` (with the test suite's
    tiny network and fewer, smaller posters) run from it."""
    folder = tmp_path_factory.mktemp("quick_start")
    done = run_entry_point(
        "genre-train", "experiment=demo", "debug=tests", "trainer.max_epochs=2",
        "data.demo.per_class=16", "data.demo.size=[48,72]", cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(folder.glob("outputs/demo/runs/*/checkpoints/epoch*.ckpt")), "no best checkpoint"
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("code", runnable_blocks())
def test_runnable_blocks_run_against_a_demo_run(code: str, quick_start_folder: Path, monkeypatch):
    monkeypatch.chdir(quick_start_folder)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<docs block>", "exec"), {"__name__": "__docs__"})
    lines = out.getvalue().splitlines()
    assert lines, "the block printed nothing"
    for line in lines:  # each block prints genres of the demo's posters
        assert re.search(r"\b(Action|Comedy|Horror|Romance)\b", line), line


def test_the_readme_api_block_prints_what_its_comments_say():
    """The block's own comments show its output; wheel-check greps for that shape."""
    code = readme_api_block()
    assert "Predictor.from_checkpoint" in code and "horror_0000.jpg Horror [('Horror'" in code


def readme_command_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command.startswith("genre-"):
                lines.append(command)
    return lines


def config_name_of(script: str, scripts: dict[str, str]) -> str:
    """The Hydra config a console script composes (its ``@hydra.main(config_name=...)``)."""
    module = scripts[script].split(":")[0]
    source = (REPO / (module.replace(".", "/") + ".py")).read_text()
    return re.search(r'config_name="(\w+)"', source).group(1)


@pytest.mark.parametrize("line", readme_command_lines())
def test_readme_commands_name_a_console_script_and_overrides_that_compose(line: str):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    script, *arguments = shlex.split(line)
    assert script in scripts, f"{script} is not a console script of pyproject.toml"
    # Placeholders (<ckpt>, <run>) stand for a path: any value composes the same way. A multirun's
    # flag is Hydra's, not an override (README's multiruns sweep nothing on the command line itself).
    overrides = [re.sub(r"<[^>]*>", "x", argument) for argument in arguments if argument not in ("-m", "--multirun")]
    # Hydra's compose raises on an unknown group option and on a key its config does not have.
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        compose(config_name=config_name_of(script, scripts), overrides=overrides)


def test_readme_relative_links_point_to_files_and_headings_that_exist():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    relative = [link for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert relative, "README links to no file of the repository"
    for link in relative:
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.exists(), f"README links to {link}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
            slugs = {slugify(heading.replace("`", ""), "-") for heading in headings}
            assert anchor in slugs, f"README links to {link}: {path} has no heading #{anchor}"


def test_ci_runs_the_readme_quick_start_verbatim():
    readme = README.read_text()
    quick_start = re.search(r"```bash\n(.*?)```", readme[readme.index("## Quick start") :], re.S).group(1)
    commands = [line for line in quick_start.splitlines() if line.strip()]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands == ['pip install -e ".[dev]" && genre-train experiment=demo', "python -m pytest -q"], commands
    for command in commands:
        assert command in ci, f".ci/run does not run README's quick-start command {command!r} as it stands"
