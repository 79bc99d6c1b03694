"""The chapters' Colab set-up cell, run in a simulated Colab.

Colab ships PyPI's `dlib` (a C++ toolkit that owns the same `site-packages/dlib/`
folder as ours) and its own torch. The simulation: a throw-away virtual environment in
a temporary folder with
  * a stand-in for PyPI's dlib, installed by pip from a hand-made wheel (the real one
    compiles C++ for many minutes);
  * stand-in distributions (metadata only, installed by pip) for torch and for every
    other requirement of ours, so that pip sees them as installed; the modules
    themselves are imported from /work/main/.venv through a folder of symbolic links
    that holds no metadata, so pip in the throw-away environment can neither see nor
    uninstall anything of .venv;
  * `google.colab` importable (a stub module) and imported first, as in Colab;
  * no package index (PIP_NO_INDEX): pip's isolated build environment gets setuptools
    from a wheel made of .venv's installed copy (PIP_FIND_LINKS), so the test needs
    no network and pip builds the package exactly as it does in Colab.
The cell's source is the one every chapter carries (`notebooks.setup_source()`), with
only REPO replaced: by a missing folder (the repository cannot be reached), and by a
git repository made from this checkout's package files (`git+file://...`, the same
code path as `git+https://github.com/...` in Colab).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402

FOREIGN = "19.24.6"  # the version of PyPI's dlib that the stand-in pretends to be
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SOURCE = notebooks.setup_source()
EXTRA = re.search(r'^EXTRA = "([^"]*)"', SOURCE, re.M).group(1)
REPO_LINE = re.compile(r'^REPO = "[^"]*"', re.M)

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def cell_with(repo: str, colab: bool = True) -> str:
    assert len(REPO_LINE.findall(SOURCE)) == 1, "the cell must set REPO exactly once"
    src = REPO_LINE.sub(lambda _: f"REPO = {repo!r}", SOURCE)
    return ("import google.colab  # as in Colab, where the kernel imports it\n" if colab
            else "") + src


def wheel(folder: pathlib.Path, name: str, version: str, files: dict[str, str]):
    """Write a minimal, valid wheel with the given files and return its path."""
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    info = f"{stem}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(data)}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    out = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def wheel_of_installed(folder: pathlib.Path, name: str) -> pathlib.Path:
    """Pack an installed distribution of .venv (files, metadata) back into a wheel."""
    dist = md.distribution(name)
    stem = f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}"
    out = folder / f"{stem}-py3-none-any.whl"
    skip = ("INSTALLER", "REQUESTED", "direct_url.json")
    with zipfile.ZipFile(out, "w") as z:
        for f in dist.files:
            path = pathlib.Path(dist.locate_file(f))
            if "__pycache__" in f.parts or f.name in skip or not path.is_file():
                continue
            z.write(path, str(f))
    return out


def stand_in_version(req: Requirement) -> str:
    """.venv's version of the requirement if it satisfies it, else the lowest version
    its specifier names."""
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        have = None
    for candidate in [have] + [s.version for s in req.specifier]:
        if candidate and req.specifier.contains(candidate, prereleases=True):
            return candidate
    if not req.specifier:
        return "1.0"
    raise AssertionError(f"no stand-in version for {req}")


def requirements() -> list[Requirement]:
    extra = PROJECT.get("optional-dependencies", {}).get(EXTRA, []) if EXTRA else []
    reqs = [Requirement(r) for r in PROJECT["dependencies"] + extra]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": EXTRA})]


def snapshot(site: pathlib.Path) -> dict[str, str]:
    """Every file under the environment's site-packages with its SHA-256."""
    return {
        str(p.relative_to(site)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(site.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A simulated Colab: returns a dict with `run(source)` and the paths."""
    tmp = tmp_path_factory.mktemp("colab")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = pathlib.Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    assert site.is_relative_to(tmp), site

    # .venv's modules, without their metadata (invisible to pip) and without dlib
    farm = tmp / "modules"
    farm.mkdir()
    sources = {pathlib.Path(sysconfig.get_paths()[k]).resolve()
               for k in ("purelib", "platlib")}
    for src in sources:
        for entry in src.iterdir():
            name = entry.name
            if (name.endswith((".dist-info", ".egg-info", ".pth"))
                    or name.startswith(("__editable__", "diffbook_dlib", "dlib"))
                    or name == "__pycache__" or (farm / name).exists()):
                continue
            (farm / name).symlink_to(entry)
    (site / "zz_venv_modules.pth").write_text(f"{farm}\n")
    stub = tmp / "stub" / "google" / "colab"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stand-in for Colab\'s module."""\n')

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "COV_", "CONDA"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(tmp / "stub"),
        PYTHONDONTWRITEBYTECODE="1",  # never write into .venv's folders
        PYTHONNOUSERSITE="1",
        PIP_CONFIG_FILE=os.devnull,  # no machine-wide pip configuration
        PIP_NO_INDEX="1",  # nothing is ever downloaded
        PIP_FIND_LINKS=str(tmp / "wheels"),  # setuptools for the isolated build
        PIP_CACHE_DIR=str(tmp / "pip-cache"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        GIT_CONFIG_NOSYSTEM="1",
        HOME=str(tmp),
    )

    wheels = tmp / "wheels"
    wheels.mkdir()
    init = f'"""Stand-in for PyPI\'s dlib."""\n__version__ = "{FOREIGN}"\n'
    made = [wheel(wheels, "dlib", FOREIGN, {"dlib/__init__.py": init,
                                            "_dlib_pybind11.py": ""})]
    stand_ins = {r.name: stand_in_version(r) for r in requirements()}
    made += [wheel(wheels, name, v, {}) for name, v in stand_ins.items()]
    wheel_of_installed(wheels, "setuptools")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *made],
                   check=True, env=env, cwd=tmp)

    # the book's repository: this checkout's package files committed to a new git repo
    repo = tmp / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "dlib", repo / "dlib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org",
           "-c", "commit.gpgsign=false", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "book"]):
        subprocess.run(git + args, check=True, env=env, capture_output=True)

    def run(source: str):
        script = tmp / "cell.py"
        script.write_text(source)
        return subprocess.run([python, script], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=300)

    def query(code: str) -> str:
        return subprocess.run([python, "-c", code], cwd=tmp, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    return dict(run=run, query=query, site=site, repo=repo, tmp=tmp,
                stand_ins=stand_ins)


OWNERS = "import importlib.metadata as m; print(m.packages_distributions().get('dlib'))"


def test_the_cell_installs_an_extra_that_exists():
    # pip only warns (and the cell hides it) when an extra is missing: check it here
    assert EXTRA == "" or EXTRA in PROJECT.get("optional-dependencies", {}), EXTRA


def test_the_simulated_colab_starts_with_pypis_dlib(colab):
    assert colab["query"](OWNERS) == "['dlib']"
    assert colab["query"]("import dlib; print(dlib.__version__)") == FOREIGN
    assert "torch" in colab["stand_ins"]


def test_outside_colab_the_clash_message_says_how_to_fix_it(colab):
    before = snapshot(colab["site"])
    run = colab["run"](cell_with("file:///nowhere", colab=False))
    assert run.returncode != 0
    assert "AssertionError" in run.stderr and "not this book's library" in run.stderr
    assert "pip uninstall dlib" in run.stderr and "pip install -e ." in run.stderr
    assert snapshot(colab["site"]) == before, "outside Colab it must change nothing"


def test_unreachable_repository_leaves_colab_as_it_was(colab):
    missing = (colab["tmp"] / "no-such-repository").as_uri()
    before = snapshot(colab["site"])
    run = colab["run"](cell_with(missing))
    assert run.returncode != 0
    assert f"Could not get the book's dlib from {missing}; nothing was changed" in (
        run.stderr)
    assert "run this cell again" in run.stderr
    assert "ModuleNotFoundError" not in run.stderr
    assert run.stdout == ""
    assert snapshot(colab["site"]) == before, "the failure path must change nothing"
    assert colab["query"](OWNERS) == "['dlib']"


def test_reachable_repository_swaps_in_the_book_library_and_keeps_torch(colab):
    repo = colab["repo"].as_uri()
    before = snapshot(colab["site"])
    run = colab["run"](cell_with(repo))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"The book's dlib {PROJECT['version']}: installed from {repo}, "
        f"replacing dlib {FOREIGN}."
    ]
    after = snapshot(colab["site"])
    removed = sorted(set(before) - set(after))
    added = sorted(set(after) - set(before))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    foreign_info = f"dlib-{FOREIGN}.dist-info/"
    swap = ("dlib/", "_dlib_pybind11.py", foreign_info, "diffbook_dlib-")
    others = [p for p in removed + added + changed if not p.startswith(swap)]
    assert others == [], "only the two dlib packages may change"
    assert "_dlib_pybind11.py" in removed and foreign_info + "RECORD" in removed
    assert any(p.startswith("diffbook_dlib-") for p in added)
    torch_info = [p for p in before if p.startswith("torch-")]
    assert torch_info and all(after.get(p) == before[p] for p in torch_info), (
        "torch was reinstalled")
    assert colab["query"](OWNERS) == "['diffbook-dlib']"
    where = colab["query"]("import dlib; print(dlib.__book__, dlib.__file__)")
    assert where == f"diffusion-book {colab['site'] / 'dlib' / '__init__.py'}"

    # run again (a reader re-runs the first cell): nothing to do, one line
    again = colab["run"](cell_with(repo))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"The book's dlib {PROJECT['version']}: already installed."
    ]
    assert snapshot(colab["site"]) == after
