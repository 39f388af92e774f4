"""Names users may have typed before the layers (rbd/__init__.py): an old module path
imports the moved module with a warning naming the new one; a renamed name fails with a
message naming the new one."""

import importlib
import subprocess
import sys

import pytest

import rbd


@pytest.mark.parametrize("old", sorted(rbd.MOVED))
def test_an_old_module_path_imports_the_moved_module(old):
    code = (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({rbd.MOVED[old]!r})\n"
        "assert old is new, (old, new)\n"
        f"assert any({rbd.MOVED[old]!r} in str(x.message) for x in w), [str(x) for x in w]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_readme_imports_keep_working():
    from rbd.ddp_hook import RBDHookState, rbd_hook  # noqa: F401
    from rbd.projection import generate_directions

    from rbd.optim import FPD, NES, RBD  # noqa: F401

    assert generate_directions is importlib.import_module("rbd.bases").generate_directions


def test_a_renamed_function_names_its_new_name():
    with pytest.raises(ImportError, match="project_coordinates"):
        from rbd.bases import coordinates  # noqa: F401
