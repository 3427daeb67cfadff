"""Console entry points (pyproject ``[project.scripts]``) and their ``scripts/*.py`` launchers.

Each ``proxyclip-*`` program is installed, runs, names itself in its usage line, and prints the same
``--help`` as ``python scripts/<name>.py --help``; no script in scripts/ edits ``sys.path`` (the
package is installed: ``pip install -e ".[test]"``).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

def declared_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml (name -> ``module:function``)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, flags=re.M))


def launcher_of(module: str) -> str | None:
    """The script in scripts/ that runs ``proxyclip_pl.commands.<module>``'s ``cli`` (its launcher)."""
    found = [p.name for p in sorted((ROOT / "scripts").glob("*.py"))
             if f"from proxyclip_pl.commands.{module} import cli\n" in p.read_text()]
    return found[0] if len(found) == 1 else None


#: console script -> (its module in proxyclip_pl.commands, its launcher in scripts/), from pyproject.toml: a new
#: program is tested here without editing this file
PROGRAMS = {name: (target.split(":")[0].rsplit(".", 1)[-1], launcher_of(target.split(":")[0].rsplit(".", 1)[-1]))
            for name, target in declared_scripts().items()}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_is_declared_and_installed(name):
    module = PROGRAMS[name][0]
    assert declared_scripts().get(name) == f"proxyclip_pl.commands.{module}:cli"
    assert PROGRAMS[name][1] is not None, f"{name}: no single launcher scripts/*.py runs proxyclip_pl.commands.{module}"
    # The console script pip wrote next to this interpreter runs that function.
    assert f"from proxyclip_pl.commands.{module} import cli\n" in Path(program_path(name)).read_text()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_launcher_runs_the_entry_point(name):
    module, launcher = PROGRAMS[name]
    source = (ROOT / "scripts" / launcher).read_text()
    assert f"from proxyclip_pl.commands.{module} import cli\n" in source
    assert 'if __name__ == "__main__":\n    cli()\n' in source


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")))
def test_scripts_do_not_edit_sys_path(script):
    assert "sys.path" not in (ROOT / "scripts" / script).read_text()


def program_path(name: str) -> str:
    """The installed console script next to this interpreter (the venv's bin/)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: run pip install -e \".[test]\"")
    return str(path)


@pytest.mark.slow
def test_programs_print_their_help_like_their_scripts():
    commands = {}
    for name, (_, launcher) in PROGRAMS.items():
        commands[name, "entry point"] = [program_path(name), "--help"]
        commands[name, "script"] = [sys.executable, str(ROOT / "scripts" / launcher), "--help"]
    # Started together: each spends seconds importing torch.
    procs = {key: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for key, argv in commands.items()}
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[key] = (proc.returncode, out, err)
    for name in PROGRAMS:
        code, out, err = results[name, "entry point"]
        assert code == 0, (name, err)
        assert out.startswith(f"usage: {name} "), (name, out[:200])
        assert results[name, "script"] == (0, out, err), name


def test_light_commands_start_without_torch():
    # proxyclip_pl's top-level names are lazy and proxyclip_pl.cli needs no torch: proxyclip-prepare
    # starts in well under a second instead of the ~10 s of importing torch, open_clip and timm.
    code = ("import sys, proxyclip_pl, datamodules, proxyclip_pl.commands.prepare, proxyclip_pl.commands.segment; "
            "heavy = sorted({'torch', 'open_clip', 'timm', 'lightning', 'albumentations', 'cv2'} & set(sys.modules)); "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_package_names_resolve_lazily():
    import datamodules
    import proxyclip_pl

    for package in (proxyclip_pl, datamodules):
        assert set(package.__all__) <= set(dir(package))
        assert all(getattr(package, name) is not None for name in package.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr(proxyclip_pl, "nope")
