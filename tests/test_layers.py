"""The layers between the apps (.importlinter, docs/design.md#layers) hold, and a back-edge
breaks them: import-linter run on this tree, and on a copy with one import added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_database  # The SQLite suite runs it (tests/conftest.py).

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bookings_project", "flights", "bookings", "payments", "notifications", "workflows")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def copy_of_the_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_tree_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "added", "edge"),
    [
        ("bookings/selectors.py", "from payments.models import Payment", "bookings.selectors -> payments.models"),
        ("bookings/services.py", "from workflows import services", "bookings.services -> workflows.services"),
        ("flights/services.py", "from bookings.models import Booking", "flights.services -> bookings.models"),
        ("payments/services.py", "from workflows.cleanup import DUTIES", "payments.services -> workflows.cleanup"),
        ("bookings/outbox.py", "from notifications import tasks", "bookings.outbox -> notifications.tasks"),
        (
            "notifications/services.py",
            "from workflows.services import booking_cancel",
            "notifications.services -> workflows.services",
        ),
    ],
)
def test_an_import_against_the_layers_breaks_the_contract(
    copy_of_the_tree: Path, module: str, added: str, edge: str
) -> None:
    path = copy_of_the_tree / module
    path.write_text(path.read_text() + f"\n{added}  # noqa\n")

    result = lint_imports(copy_of_the_tree)

    assert result.returncode == 1, result.stdout + result.stderr
    assert " 1 broken" in result.stdout
    assert edge in result.stdout, result.stdout
