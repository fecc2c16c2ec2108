"""dvc.yaml must list, for every stage, exactly the lungseg modules its script imports (directly or not),
so editing a library module makes exactly the dependent stages stale."""
import ast

import pytest
import yaml

from conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def module_path(name: str):
    """'runtime.imaging' -> src/lungseg/runtime/imaging.py"""
    return (REPO / "src" / "lungseg" / name.replace(".", "/")).with_suffix(".py")


def lungseg_imports(path) -> set[str]:
    """Dotted names (below lungseg) of the lungseg modules a file imports, anywhere in it (lazy imports too):
    `from lungseg import x`, `from lungseg.runtime import y`, `from lungseg.x import name`, `import lungseg.x`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lungseg":
            package = node.module.split(".")[1:]
            for alias in node.names:
                candidate = ".".join(package + [alias.name])
                if module_path(candidate).is_file():
                    found.add(candidate)
                elif package:
                    found.add(".".join(package))
        elif isinstance(node, ast.Import):
            found.update(a.name[len("lungseg."):] for a in node.names if a.name.startswith("lungseg."))
    return found


def closure(script) -> set[str]:
    todo, seen = list(lungseg_imports(script)), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(lungseg_imports(module_path(module)))
    return seen


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_stage_deps_are_the_modules_it_imports(name):
    stage = DVC["stages"][name]
    script = REPO / "stages" / f"{name}.py"
    assert f"stages/{name}.py" in stage["deps"]
    assert f"stages/{name}.py" in stage["cmd"] and stage["cmd"].startswith("sh stages/run ")
    listed = {d[len("src/lungseg/"):-3].replace("/", ".") for d in stage["deps"] if d.startswith("src/lungseg/")}
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
