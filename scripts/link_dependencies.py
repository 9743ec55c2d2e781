"""Hard-links into a site-packages directory the installed distributions that a wheel's
Requires-Dist needs, with their own requirements (markers evaluated here), taken from the
running environment (.venv, which setup.sh filled from PyPI). scripts/check_install.sh then
installs the wheel there with `pip install --no-index`, so pip itself checks that every
requirement is met, without a second 5 GB copy of torch and its CUDA libraries on disk.

usage: python scripts/link_dependencies.py WHEEL SITE_PACKAGES
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The Requires-Dist lines of the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(name).decode()
    return [
        Requirement(line.split(":", 1)[1].strip())
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether the requirement's marker holds here for one of the requested extras (or none)."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def closure(requirements: list[Requirement]) -> list[metadata.Distribution]:
    """The installed distributions the requirements need, transitively; exits naming the first
    requirement that nothing installed here satisfies."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(r, set[str]()) for r in requirements]
    while pending:
        requirement, extras = pending.pop()
        if not applies(requirement, extras):
            continue
        key = canonicalize_name(requirement.name)
        if (key, frozenset(requirement.extras)) in seen:
            continue
        seen.add((key, frozenset(requirement.extras)))
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"link_dependencies: {requirement} is not installed in {sys.prefix}")
        if not requirement.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"link_dependencies: {requirement} needed, {dist.version} installed")
        found[key] = dist
        pending += [(Requirement(r), set(requirement.extras)) for r in dist.requires or []]
    return list(found.values())


def link_tree(dist: metadata.Distribution, site: Path) -> int:
    """Hard-links (copies across file systems) the distribution's files that live under its
    site-packages; scripts in bin/ are left out. Returns the number of files."""
    count = 0
    for file in dist.files or []:
        if file.parts[0] == "..":
            continue
        source = Path(str(dist.locate_file(file)))
        if not source.is_file():
            continue
        target = site / file
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        count += 1
    return count


def main() -> None:
    wheel, site = Path(sys.argv[1]), Path(sys.argv[2])
    dists = closure(wheel_requirements(wheel))
    files = sum(link_tree(dist, site) for dist in dists)
    names = ", ".join(sorted(f"{d.metadata['Name']}=={d.version}" for d in dists))
    print(f"-- {len(dists)} dependencies linked from {sys.prefix} ({files} files): {names}")


if __name__ == "__main__":
    main()
