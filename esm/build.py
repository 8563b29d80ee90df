"""`esm build`: each imported function's dependencies, installed into its own package directory.

What `sam build` does before `sam deploy`: for every function `esm import` recorded in
`esm-build.toml` (beside the config), `.esm-build/<function>/` is made afresh from

1. the Python content of its layers, in the template's order (a layer's `python/`, and its
   `python/lib/python3.x/site-packages/`; a layer with `Metadata: BuildMethod: python3.x`
   is its ContentUri plus its requirements.txt installed),
2. the function's code (CodeUri), copied over the layers,
3. `pip install -r requirements.txt --target` into it, over both,

so the function's code and its dependencies come before its layers, as /var/task comes before
/opt/python on Lambda's sys.path. The config's `code_path` is that directory (esm import
wrote it so): a process gets it as its working directory and LAMBDA_TASK_ROOT, first on its
sys.path. pip runs with esm's interpreter (the one that runs the functions) and the machine's
pip configuration (its index, mirrors, proxies), so a build is offline wherever pip is.

An in-process function (`kind = "python"`) shares esm's interpreter, so its requirements must
agree with what esm itself runs on: one esm's environment does not satisfy (a pinned `boto3`
that would downgrade esm's botocore) is reported and nothing is installed for that function;
requirements esm's environment already satisfies are not installed again.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from esm.errors import EsmError

MANIFEST = "esm-build.toml"
"""Written by `esm import` beside the config; read by `esm build`."""
BUILD_DIR = ".esm-build"
PIP_TIMEOUT = 900.0
"""Seconds one pip install may take (a slow mirror), before the build reports it stuck."""
_COPY_IGNORED = shutil.ignore_patterns(BUILD_DIR, ".aws-sam", "__pycache__", "*.pyc", ".git")


class BuildError(EsmError):
    """A function could not be built; the message names the function and what failed."""


@dataclass(frozen=True)
class Layer:
    name: str
    path: Path
    """The directory whose content goes on the path."""
    requirements: Path | None = None


@dataclass(frozen=True)
class FunctionBuild:
    name: str
    kind: str
    source: Path
    package: Path
    requirements: Path | None = None
    layers: tuple[Layer, ...] = ()


# -- the manifest ---------------------------------------------------------------------------


def manifest_path(config_path: Path) -> Path:
    return config_path.parent / MANIFEST


def load_manifest(path: Path) -> list[FunctionBuild]:
    """The functions to build; a broken manifest is one error naming the key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BuildError(f"{path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: not valid TOML ({exc}); run esm import again") from None
    base = path.parent
    builds = []
    for name, entry in (raw.get("functions") or {}).items():
        where = f"{path}: functions.{name}"
        try:
            package = base / str(entry["package"])
            layers = tuple(
                Layer(
                    name=str(layer["name"]),
                    path=base / str(layer["path"]),
                    requirements=base / layer["requirements"] if "requirements" in layer else None,
                )
                for layer in entry.get("layers", [])
            )
            builds.append(
                FunctionBuild(
                    name=str(name),
                    kind=str(entry.get("kind", "process")),
                    source=base / str(entry["source"]),
                    package=package,
                    requirements=(
                        base / entry["requirements"] if "requirements" in entry else None
                    ),
                    layers=layers,
                )
            )
        except (KeyError, TypeError) as exc:
            raise BuildError(
                f"{where}: missing or invalid key {exc}; run esm import again"
            ) from None
        if not package.resolve().is_relative_to((base / BUILD_DIR).resolve()):
            raise BuildError(
                f"{where}.package: {entry['package']!r} is not under {BUILD_DIR}/ "
                "(esm build only replaces directories there)"
            )
    return builds


# -- requirements ---------------------------------------------------------------------------


def read_requirements(path: Path) -> list[Requirement]:
    """The named requirements of a requirements.txt (see `parse_requirements`)."""
    return parse_requirements(path)[0]


def parse_requirements(
    path: Path, _seen: frozenset[Path] = frozenset()
) -> tuple[list[Requirement], list[str]]:
    """A requirements.txt as pip reads it: (named requirements, local paths and URLs), with
    `-r other.txt` followed; pip's options (`--index-url`, `-e`, ...) are left to pip. A line
    that is none of these is an error naming the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BuildError(f"{path}: cannot read it ({exc.strerror})") from None
    found: list[Requirement] = []
    others: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        include = re.match(r"^(?:-r|--requirement)[\s=]+(\S+)$", line)
        if include:
            nested = (path.parent / include.group(1)).resolve()
            if nested not in _seen:
                more, more_others = parse_requirements(nested, _seen | {path.resolve()})
                found.extend(more)
                others.extend(more_others)
            continue
        if line.startswith("-"):
            continue
        if "://" in line or line.startswith((".", "/")):
            # A local project or a URL: pip resolves it; relative to the file, as pip does.
            others.append(line if "://" in line else str((path.parent / line).resolve()))
            continue
        try:
            found.append(Requirement(line))
        except InvalidRequirement as exc:
            raise BuildError(f"{path}:{number}: {line!r} is not a requirement ({exc})") from None
    return found, others


def installed_version(name: str) -> str | None:
    """The version of a distribution in esm's own environment, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def in_process_conflicts(requirements: Iterable[Requirement]) -> list[str]:
    """Requirements esm's environment has in a version they exclude: an in-process function
    would run with esm's version (one interpreter has one of each), not the one it asks for."""
    conflicts = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = installed_version(requirement.name)
        if version is not None and not requirement.specifier.contains(version, prereleases=True):
            conflicts.append(f"{requirement} (esm runs {requirement.name} {version})")
    return conflicts


def missing_in_process(requirements: Iterable[Requirement]) -> list[Requirement]:
    """Requirements esm's environment does not have at all (the ones to install)."""
    return [
        r
        for r in requirements
        if (r.marker is None or r.marker.evaluate()) and installed_version(r.name) is None
    ]


# -- building -------------------------------------------------------------------------------


def build_function(function: FunctionBuild) -> str:
    """Make the function's package afresh; returns a one-line summary."""
    started = time.monotonic()
    if not function.source.is_dir():
        raise BuildError(f"function {function.name}: its code {function.source} is not a directory")
    requirement_files = [layer.requirements for layer in function.layers if layer.requirements]
    if function.requirements is not None:
        requirement_files.append(function.requirements)
    in_process = function.kind == "python"
    to_install: list[str] = []
    if in_process:
        parsed = [parse_requirements(path) for path in requirement_files]
        wanted = [r for named, _ in parsed for r in named]
        conflicts = in_process_conflicts(wanted)
        if conflicts:
            raise BuildError(
                f"function {function.name}: requirements esm's own environment does not satisfy: "
                f'{"; ".join(conflicts)}. An in-process function (kind = "python") shares esm\'s '
                'interpreter; nothing was installed: use kind = "process" for it, or relax them'
            )
        to_install = [str(r) for r in missing_in_process(wanted)]
        to_install += [other for _, others in parsed for other in others]
    shutil.rmtree(function.package, ignore_errors=True)
    function.package.mkdir(parents=True)
    for layer in function.layers:
        if not layer.path.is_dir():
            raise BuildError(
                f"function {function.name}: layer {layer.name}'s {layer.path} is not a directory"
            )
        _copy(layer.path, function.package)
        for site in sorted(layer.path.glob("lib/python3*/site-packages")):
            _copy(site, function.package)
    _copy(function.source, function.package)
    if in_process:
        if to_install:
            files = ", ".join(str(path) for path in requirement_files)
            _pip(function, to_install, f"{files} ({', '.join(to_install)})")
        _check_no_shadowing(function)
    else:
        for path in requirement_files:
            _pip(function, ["-r", str(path)], str(path))
    installed = sum(1 for _ in function.package.glob("*.dist-info"))
    names = ", ".join(layer.name for layer in function.layers)
    layers = f", layers {names}" if names else ""
    return (
        f"{function.name}: {function.package} ({installed} distributions installed{layers}) "
        f"in {time.monotonic() - started:.1f} s"
    )


def _copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=_COPY_IGNORED, symlinks=True)


def _pip(function: FunctionBuild, arguments: list[str], what: str) -> None:
    command = [
        sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
        "--upgrade", "--target", str(function.package), *arguments,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildError(
            f"function {function.name}: pip did not finish installing {what} within "
            f"{PIP_TIMEOUT:.0f} s (check the package index pip is configured with)"
        ) from None
    if done.returncode != 0:
        raise BuildError(
            f"function {function.name}: pip could not install {what}: "
            f"{pip_failure(done.stdout + done.stderr)}"
        )


def pip_failure(output: str) -> str:
    """pip's own reason, naming the requirement it stopped at when it says which."""
    errors = [
        line.removeprefix("ERROR:").strip()
        for line in output.splitlines()
        if line.startswith("ERROR:")
    ]
    for line in errors:
        match = re.search(
            r"(?:No matching distribution found for|satisfies the requirement) (\S+)", line
        )
        if match:
            return f"requirement {match.group(1)}: {line}"
    if errors:
        return errors[-1]
    tail = [line for line in output.splitlines() if line.strip()]
    return tail[-1] if tail else "pip failed without a message"


def _check_no_shadowing(function: FunctionBuild) -> None:
    """pip also installs what the requirements depend on; a distribution esm has in another
    version would shadow esm's own in the shared interpreter (code_path comes first)."""
    clashes = []
    for dist in _distributions(function.package):
        name = dist.metadata["Name"]
        version = installed_version(name) if name else None
        if version is not None and version != dist.version:
            clashes.append(f"{name} {dist.version} (esm runs {name} {version})")
    if clashes:
        shutil.rmtree(function.package, ignore_errors=True)
        raise BuildError(
            f"function {function.name}: its requirements bring {', '.join(sorted(clashes))}, "
            "which would replace esm's own in the interpreter they share; the package was "
            'removed: use kind = "process" for it'
        )


def _distributions(path: Path) -> Iterator[Any]:
    seen = set()
    for dist in importlib.metadata.distributions(path=[str(path)]):
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name not in seen:
            seen.add(name)
            yield dist


def build(config_path: Path) -> tuple[list[str], list[str]]:
    """Build every function of the config's manifest: (summaries, errors), one line each.
    A failed function does not stop the others."""
    path = manifest_path(config_path)
    if not path.is_file():
        return [], []
    done, failed = [], []
    for function in load_manifest(path):
        try:
            done.append(build_function(function))
        except BuildError as exc:
            failed.append(str(exc))
    return done, failed
