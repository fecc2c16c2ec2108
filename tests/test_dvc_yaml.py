"""dvc.yaml must list, for every stage, exactly the lungseg modules its script imports (directly or not), so
editing a library module makes exactly the dependent stages stale, and every param it reads, so changing one does."""
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


# Stages that hand the whole params object to a library module, whose functions take it as `params`.
WHOLE_PARAMS_TAKEN_BY = {"train": [REPO / "src" / "lungseg" / "trainer.py"]}


def params_read(script, roots: dict[str, tuple[str, ...]] | None = None) -> set[tuple[str, ...]]:
    """The params.yaml keys a file reads: ('section', 'key') from `params.section.key` where
    `params = load_params(...)` (or a name in `roots`), and from `config.key` where
    `config = load_params(...).section`; ('name',) where the chain stops at a top-level name (`params.seed`, a
    section handed over whole). The checkpoint's own params (`trained.params...`) are not params.yaml's, and
    `params.model_dump()` records them rather than reading a setting: neither is counted."""
    tree = ast.parse(script.read_text())
    bound: dict[str, tuple[str, ...]] = dict(roots or {})
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value, path = node.value, ()
            if isinstance(value, ast.Attribute):
                value, path = value.value, (value.attr,)
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "load_params":
                bound[node.targets[0].id] = path
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    read = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        chain = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in bound and chain[0] != "model_dump":
            read.add((bound[node.id] + tuple(chain))[:2])
    return read


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_stage_params_cover_what_its_script_reads(name):
    declared = {tuple(param.split(".")) for param in DVC["stages"][name].get("params", [])}
    read = params_read(REPO / "stages" / f"{name}.py")
    for module in WHOLE_PARAMS_TAKEN_BY.get(name, []):
        read |= params_read(module, roots={"params": ()})
    assert read, f"{name}: no params read found (has the script's way of loading them changed?)"
    missing = {key for key in read if key[:1] not in declared and key not in declared}
    assert not missing, f"{name}: reads {sorted('.'.join(k) for k in missing)} without listing them in dvc.yaml"


def test_every_stage_output_is_named_once():
    paths = []
    for stage in DVC["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind, []):
                paths.append(next(iter(item)) if isinstance(item, dict) else item)
    assert len(paths) == len(set(paths))
