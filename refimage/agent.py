"""Install the agent's Python package into the image tree.

The agent recipe builds agent/ with setuptools; here the package directory is
copied into Debian's dist-packages and its console scripts (from
agent/pyproject.toml) are written as /usr/bin wrappers. paho-mqtt comes from
Debian's python3-paho-mqtt (2.1.0, the version wrynose carries).
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from refimage.progress import BuildError, run

DIST_PACKAGES = Path("usr/lib/python3/dist-packages")


def source_files(agent_dir: Path) -> list[Path]:
    """Every file that goes into the image, for the cache key."""
    files = [agent_dir / "pyproject.toml"]
    files += sorted(
        p
        for p in (agent_dir / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    )
    return files


def console_scripts(agent_dir: Path) -> dict[str, str]:
    """name -> 'module:function', from [project.scripts]."""
    meta = tomllib.loads((agent_dir / "pyproject.toml").read_text())
    scripts = meta.get("project", {}).get("scripts", {})
    if not scripts:
        raise BuildError(f"{agent_dir}/pyproject.toml declares no [project.scripts]")
    return {str(k): str(v) for k, v in scripts.items()}


def install(agent_dir: Path, root: Path) -> list[str]:
    """Copy the package and write its entry scripts; returns the script names."""
    packages = [
        p for p in (agent_dir / "src").iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    ]
    if not packages:
        raise BuildError(f"no Python package under {agent_dir}/src")
    for pkg in packages:
        dest = root / DIST_PACKAGES / pkg.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(pkg, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    names = []
    for name, target in console_scripts(agent_dir).items():
        module, _, func = target.partition(":")
        if not module or not func:
            raise BuildError(f"agent script {name}: bad entry point {target!r}")
        script = root / "usr/bin" / name
        script.write_text(
            "#!/usr/bin/python3\n"
            "import sys\n\n"
            f"from {module} import {func}\n\n"
            "if __name__ == '__main__':\n"
            f"    sys.exit({func}())\n"
        )
        script.chmod(0o755)
        names.append(name)
    # Byte-compile now: the root file system is read-only at run time. The
    # .pyc files hold a hash of their source, not its mtime, so they are the
    # same at every build (refimage/reproducible.py).
    run(
        [
            "chroot",
            root,
            "python3",
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "checked-hash",
            *(f"/{DIST_PACKAGES}/{p.name}" for p in packages),
        ]
    )
    return names
