"""GitHub Actions and the README agree: CI runs the README's test command (through
.ci/run), Pages builds with the README's build command and publishes the folder the
build writes, and every link of the README to the repository, its CI badge and the
published book derives from repository.url in _config.yml, the one place that names
the repository."""

import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
README = (ROOT / "README.md").read_text()
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
TEST_COMMAND = "bash scripts/test.sh"
BUILD_COMMAND = "bash scripts/build.sh"


def workflow(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def runs(wf: dict) -> list[str]:
    return [line.strip() for s in steps(wf) for line in s.get("run", "").splitlines()]


def uses(wf: dict, action: str) -> list[dict]:
    return [s for s in steps(wf) if s.get("uses", "").split("@")[0] == action]


def pages_url(repo_url: str) -> str:
    """GitHub Pages address of a project repository https://github.com/OWNER/NAME."""
    m = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+)", repo_url)
    assert m, f"repository.url is not a GitHub repository: {repo_url}"
    owner, name = m.groups()
    if name.lower() == f"{owner.lower()}.github.io":  # a user or organisation site
        return f"https://{owner.lower()}.github.io/"
    return f"https://{owner.lower()}.github.io/{name}/"


def readme_code() -> str:
    return "\n".join(re.findall(r"```(?:bash|sh)\n(.*?)```", README, re.S))


def test_the_readme_shows_both_commands():
    code = readme_code()
    assert TEST_COMMAND in code and BUILD_COMMAND in code


def test_ci_runs_the_readme_test_command_on_push_and_pull_request():
    ci = workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    assert any(re.fullmatch(r"(bash )?\.ci/run", r) for r in runs(ci)), runs(ci)
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^exec {re.escape(TEST_COMMAND)}$", ci_run, re.M), (
        ".ci/run must call the README's test command"
    )
    (python,) = uses(ci, "actions/setup-python")
    assert str(python["with"]["python-version"]) == "3.11"


@pytest.mark.parametrize("name", ["ci.yml", "pages.yml"])
def test_workflows_cache_the_venv_and_take_the_cpu_torch(name):
    wf = workflow(name)
    (cache,) = uses(wf, "actions/cache")
    assert cache["with"]["path"] == ".venv"
    key = cache["with"]["key"]
    assert "pyproject.toml" in key and "requirements/constraints.txt" in key, key
    assert "steps.python.outputs.python-version" in key, "a venv is tied to its Python"
    envs = [job.get("env", {}) for job in wf["jobs"].values()] + [wf.get("env", {})]
    assert any(
        e.get("PIP_EXTRA_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
        for e in envs
    ), "the runner has no GPU: take torch from the CPU wheel index"


def test_pages_builds_with_the_readme_command_and_publishes_its_output():
    pages = workflow("pages.yml")
    assert BUILD_COMMAND in runs(pages)
    (upload,) = uses(pages, "actions/upload-pages-artifact")
    assert upload["with"]["path"] == "_build/html"
    assert "_build/html" in (ROOT / "scripts" / "build.sh").read_text()
    assert CONFIG["repository"]["branch"] in pages["on"]["push"]["branches"]
    (deploy_job,) = [
        job for job in pages["jobs"].values()
        if any(s.get("uses", "").startswith("actions/deploy-pages@")
               for s in job.get("steps", []))
    ]
    assert deploy_job["needs"] == "build"
    assert deploy_job["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy_job["environment"]["name"] == "github-pages"
    assert pages["permissions"] == {"contents": "read"}
    assert pages["concurrency"]["cancel-in-progress"] is False


def test_readme_links_agree_with_config():
    links = re.findall(r"https?://[^\s)\]>\"']+", README)
    github = [u for u in links if "github.com" in u or "github.io" in u]
    for url in github:
        assert url == REPO_URL or url.startswith(REPO_URL + "/") or url.startswith(
            pages_url(REPO_URL)
        ), f"README link {url} does not derive from _config.yml's {REPO_URL}"
    assert pages_url(REPO_URL) in links, "the README links the published book"
    badge = f"[![CI]({REPO_URL}/actions/workflows/ci.yml/badge.svg)]"
    assert f"{badge}({REPO_URL}/actions/workflows/ci.yml)" in README


def test_pages_url_rule():
    assert pages_url("https://github.com/a/b") == "https://a.github.io/b/"
    assert pages_url("https://github.com/Org/org.github.io") == "https://org.github.io/"


def repository_files() -> list[pathlib.Path]:
    """The checkout's files that git tracks or would track (not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout")
def test_no_code_names_the_repository():
    """The URL lives in _config.yml; the README documents it and sync-setup copies it
    into the notebooks' set-up cells (tests/test_book.py checks they are current)."""
    allowed = {ROOT / "_config.yml", ROOT / "README.md"}
    offenders = []
    for path in repository_files():
        if path in allowed or path.suffix == ".ipynb":
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if REPO_URL in text or pages_url(REPO_URL) in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"only _config.yml may name the repository: {offenders}"
