"""dvc.yaml must list, for every stage, exactly the lungseg modules its script imports (directly or not),
so editing a library module makes exactly the dependent stages stale."""
import ast

import pytest
import yaml

from conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def lungseg_imports(path) -> set[str]:
    """Names of lungseg modules imported by a file: `from lungseg import x`, `from lungseg.x import y`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lungseg":
            if node.module == "lungseg":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lungseg."))
    return found


def closure(script) -> set[str]:
    todo, seen = list(lungseg_imports(script)), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(lungseg_imports(REPO / "src" / "lungseg" / f"{module}.py"))
    return seen


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_stage_deps_are_the_modules_it_imports(name):
    stage = DVC["stages"][name]
    script = REPO / "stages" / f"{name}.py"
    assert f"stages/{name}.py" in stage["deps"]
    assert f"stages/{name}.py" in stage["cmd"]
    listed = {d[len("src/lungseg/"):-3] for d in stage["deps"] if d.startswith("src/lungseg/")}
    assert listed == closure(script)


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_stage_params_exist(name):
    for param in DVC["stages"][name].get("params", []):
        node = PARAMS
        for part in param.split("."):
            assert part in node, f"{name}: unknown param {param}"
            node = node[part]


def test_every_stage_output_is_named_once():
    paths = []
    for stage in DVC["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind, []):
                paths.append(next(iter(item)) if isinstance(item, dict) else item)
    assert len(paths) == len(set(paths))
