"""The repository itself: small enough to clone fast and to travel to a GPU host, and docs whose links work."""
import re
import subprocess

from conftest import REPO

TRACKED_BUDGET = 55_000_000  # bytes of tracked files: figures in metrics/ and docs/ count too
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def tracked_files():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in listed.decode().split("\0") if name]


def test_tracked_files_stay_within_the_budget():
    sizes = {path: path.stat().st_size for path in tracked_files() if path.is_file()}
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    assert total <= TRACKED_BUDGET, f"tracked files {total / 1e6:.1f} MB > {TRACKED_BUDGET / 1e6:.0f} MB; largest: " + \
        ", ".join(f"{p.relative_to(REPO)} {s / 1e6:.1f} MB" for p, s in largest)


def test_every_relative_link_and_image_in_the_docs_exists():
    broken = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # code blocks hold commands, not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_every_doc_page_is_reachable_from_the_readme():
    readme = (REPO / "README.md").read_text()
    for doc in DOCS[1:]:
        assert f"docs/{doc.name}" in readme, f"README does not link docs/{doc.name}"
