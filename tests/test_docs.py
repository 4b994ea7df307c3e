"""The repository explains itself, and what it says is true.

- The README's five-minute tour is run as pasted, with bash and curl, against a live server
  holding the demo data, and must end with the booking cancelled and its payment refunded.
- The README shows what `make run` really prints, and stays short.
- Every relative link in README.md and docs/*.md reaches an existing file, and every
  `#anchor` in it a heading of that file (GitHub's slugs).
- The headings other pages and the code point at exist, and docs/README.md indexes every page.
- No tracked file points outside the repository.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.management import call_command

from bookings.models import Booking
from flights.models import Flight
from payments.models import Payment

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TOUR_BASE = "http://127.0.0.1:8000"
TOUR_FLIGHT = '"flightId": 1,'

# Built from parts, so that this file does not contain what it looks for.
OUTSIDE_REFERENCES = ("../" + "shared", "DESIGN" + " §")

REQUIRED_HEADINGS = {
    "api.md": ["Auth", "Flights", "Bookings", "Payments", "Idempotency", "Errors"],
    "design.md": [
        "The Flights service boundary",
        "The saga",
        "State machine",
        "Payments exactly once",
        "Cleanup",
        "Invariants",
        "Layers",
    ],
    "operations.md": ["Configuration", "Serving", "Cleanup from cron"],
}

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without its fenced code blocks (a `# comment` in a shell block is no heading)."""
    return FENCE.sub("", text)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation but '-' and '_'
    dropped, each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(_prose(page.read_text())):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def tour_script() -> str:
    """The first shell block under the README's "Five-minute tour" heading."""
    section = README.read_text().split("## Five-minute tour", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the README's tour has no ```sh block"
    return match.group(1)


def test_readme_is_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material into docs/"


def test_every_relative_link_reaches_a_file_and_a_heading():
    broken = []
    for page in _pages():
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            destination = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(ROOT)} -> {target}"
            if not destination.exists():
                broken.append(f"{where}: no such file")
            elif not destination.is_relative_to(ROOT):
                broken.append(f"{where}: outside the repository")
            elif anchor and (destination.suffix != ".md" or anchor not in anchors(destination)):
                broken.append(f"{where}: no heading with that anchor")
    assert not broken, "\n".join(broken)


def test_the_pages_have_the_headings_that_are_pointed_at():
    missing = [
        f"docs/{name}: ## {heading}"
        for name, headings in REQUIRED_HEADINGS.items()
        for heading in headings
        if not re.search(rf"^## {re.escape(heading)}\s*$", (DOCS / name).read_text(), re.M)
    ]
    assert not missing, "\n".join(missing)


def test_the_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    unlisted = [page.name for page in DOCS.glob("*.md") if page.name != "README.md" and f"]({page.name})" not in index]
    assert not unlisted, f"docs/README.md does not link {unlisted}"


def test_no_tracked_file_points_outside_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    found = []
    for name in filter(None, tracked):
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(reference in line for reference in OUTSIDE_REFERENCES):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.django_db
def test_the_readme_shows_what_make_run_prints():
    out = io.StringIO()
    call_command("load_demo_data", stdout=out)
    readme = README.read_text()
    for line in out.getvalue().splitlines():
        shown = line.split("token=")[0]  # tokens differ from run to run
        assert shown in readme, f"make run prints {line!r}; the README does not show it"
    makefile = (ROOT / "Makefile").read_text()
    for label in ("Swagger UI: http://$(HOST):$(PORT)/api/docs/", "Admin:      http://$(HOST):$(PORT)/admin/"):
        assert label in makefile
        assert label.replace("$(HOST):$(PORT)", "127.0.0.1:8000") in readme


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("curl") and shutil.which("python3")),
    reason="needs bash, curl and python3",
)
def test_the_readme_tour_runs_as_pasted(live_server):
    """The tour's lines, pasted into bash after `make run`: only the server's address and the
    demo flight's id (which the test database numbers its own way) are substituted."""
    call_command("load_demo_data", stdout=io.StringIO())
    flight = Flight.objects.get(flight_number="UK808")
    script = tour_script()
    assert script.count(TOUR_BASE) == 1 and script.count(TOUR_FLIGHT) == 1, "the tour's address or flight moved"
    script = script.replace(TOUR_BASE, live_server.url).replace(TOUR_FLIGHT, f'"flightId": {flight.pk},')

    # -e and pipefail: a step that fails (a token that did not parse) fails the test there.
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr

    booking = Booking.objects.get(user__username="demo")
    assert booking.status == "CANCELLED" and booking.cancel_reason == "user"
    assert booking.flight_id == flight.pk and booking.seats == 2
    payment = Payment.objects.get(booking=booking)
    assert payment.status == "REFUNDED" and payment.amount == booking.total_cost
    flight.refresh_from_db()
    assert flight.available_seats == flight.capacity
    last_answers = done.stdout.strip().splitlines()
    assert '"status":"CANCELLED"' in last_answers[-2]
    assert '"toStatus":"CANCELLED"' in last_answers[-1]
