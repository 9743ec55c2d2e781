#!/usr/bin/env bash
# The install check, as a user installs: builds dist/ (scripts/build_dist.sh; --no-build
# takes dist/ as it is), checks the wheel's and the sdist's contents and size, then installs
# the wheel into a fresh virtualenv (no system site-packages) on a PATH without cargo or rustc,
# and there imports slade, runs a retrieval call and one TeacherTrainer step
# (scripts/smoke_installed.py). The wheel's dependencies, torch with its CUDA libraries (5 GB),
# are hard-linked from .venv, which setup.sh filled from PyPI (scripts/link_dependencies.py),
# and pip installs the wheel with --no-index, so pip checks that they meet its requirements
# without a second copy on disk; SLADE_INSTALL_FROM_PYPI=1 downloads them from PyPI instead.
# Building from the sdist with build isolation, the path without a wheel: scripts/check_sdist.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}
if [ "${1:-}" != "--no-build" ]; then
    bash scripts/build_dist.sh
fi
shopt -s nullglob
wheels=(dist/slade_rs-*.whl)
sdists=(dist/slade_rs-*.tar.gz)
if [ ${#wheels[@]} -ne 1 ] || [ ${#sdists[@]} -ne 1 ]; then
    echo "dist/ must hold one wheel and one sdist, found: ${wheels[*]:-no wheel} ${sdists[*]:-no sdist}" >&2
    exit 1
fi
wheel=$root/${wheels[0]}
sdist=$root/${sdists[0]}

echo "-- contents of $(basename "$wheel") and $(basename "$sdist")"
"$PYTHON" - "$wheel" "$sdist" <<'PY'
import re
import sys
import tarfile
import zipfile
from pathlib import Path

wheel, sdist = Path(sys.argv[1]), Path(sys.argv[2])
problems = []

# The wheel: the package's .py files as in python/slade, the extension, its stubs and py.typed,
# and the dist-info; nothing else (no tests or data, no byte code, no build leftovers).
WHEEL_MAX = 4 * 2**20
if wheel.stat().st_size > WHEEL_MAX:
    problems.append(f"wheel is {wheel.stat().st_size} bytes, over the {WHEEL_MAX} bound")
with zipfile.ZipFile(wheel) as zf:
    names = set(zf.namelist())
    dist_info = {n for n in names if re.match(r"slade_rs-[^/]+\.dist-info/", n)}
    package = names - dist_info
    tree = {
        "slade/" + p.relative_to("python/slade").as_posix()
        for p in Path("python/slade").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    native = {"slade/_core.abi3.so", "slade/_core.pyi", "slade/py.typed"}
    for name in sorted((tree | native) - package):
        problems.append(f"wheel lacks {name}")
    for name in sorted(package - tree - native):
        problems.append(f"wheel holds {name}, which is not part of the package")
    info = wheel.name[: -len(".whl")].split("-")
    tag = "-".join(info[2:])
    if not re.fullmatch(r"cp39-abi3-manylinux_2_\d+_x86_64", tag):
        problems.append(f"wheel tag {tag}: expected cp39-abi3-manylinux_2_N_x86_64")
    meta = next((zf.read(n).decode() for n in dist_info if n.endswith("/METADATA")), "")
    for line in ("Requires-Dist: torch==2.11.0", "Requires-Python: >=3.10"):
        if line not in meta.splitlines():
            problems.append(f"wheel METADATA lacks {line!r}")
    so_size = zf.getinfo("slade/_core.abi3.so").file_size if "slade/_core.abi3.so" in names else 0

# The sdist: what building needs (the crate, its lock file, the LIBTORCH_USE_PYTORCH setting,
# the package), no build outputs.
SDIST_MAX = 2 * 2**20
if sdist.stat().st_size > SDIST_MAX:
    problems.append(f"sdist is {sdist.stat().st_size} bytes, over the {SDIST_MAX} bound")
with tarfile.open(sdist) as tf:
    members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
    for need in (
        "pyproject.toml",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        ".cargo/config.toml",
        "src/lib.rs",
        "src/py/mod.rs",
        "python/slade/__init__.py",
        "python/slade/_core.pyi",
        "python/slade/py.typed",
        "README.md",
    ):
        if need not in members:
            problems.append(f"sdist lacks {need}")
    for name in members:
        parts = name.split("/")
        outputs = {"target", "dist", ".venv", "runs", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        if parts[0] in outputs or "__pycache__" in parts:
            problems.append(f"sdist holds build output {name}")
        elif name.endswith((".so", ".pyc", ".whl")):
            problems.append(f"sdist holds binary {name}")
    if ".cargo/config.toml" in members:
        config = tf.extractfile(members[".cargo/config.toml"]).read().decode()
        if 'LIBTORCH_USE_PYTORCH = "1"' not in config:
            problems.append("sdist's .cargo/config.toml does not set LIBTORCH_USE_PYTORCH")
    if "pyproject.toml" in members:
        pyproject = tf.extractfile(members["pyproject.toml"]).read().decode()
        if not re.search(r'requires = \[[^\]]*"torch==2\.11\.0"', pyproject):
            problems.append("sdist's pyproject.toml does not build against torch==2.11.0")

if problems:
    sys.exit("package check failed:\n  " + "\n  ".join(problems))
print(
    f"wheel {wheel.stat().st_size / 2**20:.2f} MiB (bound {WHEEL_MAX / 2**20:.0f} MiB; "
    f"extension {so_size / 2**20:.2f} MiB unpacked), tag {tag}, {len(tree)} .py files, "
    f"_core.abi3.so, _core.pyi, py.typed; sdist {sdist.stat().st_size / 2**20:.2f} MiB "
    f"(bound {SDIST_MAX / 2**20:.0f} MiB), {len(members)} files"
)
PY

# A PATH without cargo and rustc: every directory holding either is dropped.
clean_path=
IFS=: read -r -a dirs <<< "$PATH"
for dir in "${dirs[@]}"; do
    if [ -z "$dir" ] || [ -e "$dir/cargo" ] || [ -e "$dir/rustc" ]; then
        continue
    fi
    clean_path=${clean_path:+$clean_path:}$dir
done

# Under target/, on .venv's file system, so that the dependencies can be hard-linked.
mkdir -p target
work=$(mktemp -d "$root/target/install-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
if [ "${SLADE_INSTALL_FROM_PYPI:-0}" = 1 ]; then
    sources=()
else
    site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" scripts/link_dependencies.py "$wheel" "$site"
    sources=(--no-index)
fi
echo "-- pip install $(basename "$wheel") in a fresh virtualenv, without cargo or rustc"
(
    cd "$work"
    unset PYTHONPATH PYTHONHOME VIRTUAL_ENV CARGO_TARGET_DIR LIBTORCH LIBTORCH_USE_PYTORCH
    export PATH="$work/venv/bin:$clean_path"
    if command -v cargo >/dev/null || command -v rustc >/dev/null; then
        echo "cargo or rustc still on PATH: $(command -v cargo rustc | tr '\n' ' ')" >&2
        exit 1
    fi
    # --only-binary: nothing may need building; --no-compile: no byte code for torch's
    # thousands of modules (half of the install time here).
    python -m pip install --quiet --only-binary=:all: --no-compile "${sources[@]}" "$wheel"
    python "$root/scripts/smoke_installed.py"
)
