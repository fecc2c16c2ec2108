"""The commands the README and docs show are commands that exist: every `lungseg ...` line parses with the CLI's
own parser, every `-S key=value` names a param params.yaml has, every script and file they run exists."""
import re
import shlex

import pytest
import yaml

from lungseg.cli import build_parser
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def command_lines():
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():  # continuation lines joined
                line = line.split("  #")[0].strip()
                if line and not line.startswith("#"):
                    yield doc.name, line


COMMANDS = list(command_lines())


def lungseg_calls():
    for doc, line in COMMANDS:
        for part in re.split(r"&&|\|", line):
            words = shlex.split(part.replace("$(", "(").strip())
            if words and words[0].endswith("lungseg") and len(words) > 1:  # `lungseg ...`, `.venv/bin/lungseg ...`
                yield doc, words[1:]


@pytest.mark.parametrize("doc, arguments", list(lungseg_calls()), ids=lambda value: " ".join(value)[:60]
                         if isinstance(value, list) else value)
def test_every_lungseg_command_parses(doc, arguments):
    build_parser().parse_args(arguments)


def test_every_overridden_param_exists():
    for doc, line in COMMANDS:
        for key in re.findall(r"-S ([\w.]+)=", line):
            node = PARAMS
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{doc}: {line}: no param {key}"
                node = node[part]


def test_every_script_and_recipe_named_exists():
    for doc, line in COMMANDS:
        for path in re.findall(r"((?:benchmarks|tools|recipes|stages)/[\w./-]+\.(?:py|args))", line):
            assert (REPO / path).is_file(), f"{doc}: {line}: {path} does not exist"
