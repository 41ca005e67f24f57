"""Repository rules that matter, checked as tests (STYLE.md, "Lints are tests")."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastpath._core.chain as core_chain
from fastpath import errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastpath"
BIN = Path(sys.executable).parent


def _run(*cmd):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


def test_ruff_is_clean():
    result = _run(str(BIN / "ruff"), "check", "--no-cache", "fastpath", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_cython_lint_is_clean():
    result = _run(str(BIN / "cython-lint"), "fastpath/_core")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_public_subpackage_declares_all():
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name.startswith("_"):
            continue
        tree = ast.parse(init.read_text())
        names = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }
        assert "__all__" in names, f"{init.relative_to(ROOT)} sets no __all__"


def test_nothing_outside_the_package_imports_the_core():
    for path in list((ROOT / "tests").rglob("*.py")) + list((ROOT / "bench").rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        assert "fastpath._core" not in text, f"{path.relative_to(ROOT)} reaches into the core"


def _pxd_function_declarations():
    for pxd in (PACKAGE / "_core").glob("*.pxd"):
        text = re.sub(r"#.*", "", pxd.read_text())
        # Join continuation lines of a declaration.
        for decl in re.findall(r"^cdef (?!class|struct|packed|enum|extern)[^:]*?\)[^\n:]*", text,
                               flags=re.M | re.S):
            yield pxd.name, " ".join(decl.split())


def test_every_core_function_states_its_exception_contract():
    found = 0
    for name, decl in _pxd_function_declarations():
        found += 1
        returns_object = re.match(r"cdef (inline )?(dict|object|list)\b", decl)
        assert returns_object or "noexcept" in decl or "except" in decl, f"{name}: {decl}"
    assert found > 10


def test_every_njit_kernel_uses_the_shared_options():
    for path in PACKAGE.rglob("*.py"):
        for line in path.read_text().splitlines():
            if line.strip().startswith("@njit"):
                assert line.strip() == "@njit(**NJIT)", f"{path.relative_to(ROOT)}: {line}"


@pytest.mark.parametrize("cls", errors.VringError.__subclasses__(), ids=lambda c: c.__name__)
def test_error_classes_match_the_core_codes(cls):
    core_names = {v: k for k, v in vars(core_chain).items() if k.startswith("FP_E_")}
    assert cls.code in core_names
    assert errors.error_for_code(cls.code) is cls
    assert cls.__doc__


def test_every_core_code_has_an_error_class():
    codes = {v for k, v in vars(core_chain).items() if k.startswith("FP_E_")}
    assert codes == {cls.code for cls in errors.VringError.__subclasses__()}


UNCHECKED_CODE = re.compile(
    r"^cdef [^\n]*\b(fp_\w+_burst|fp_chain_gather|fp_chain_scatter|fp_append_buffer"
    r"|fp_single_segment_chain|fp_gpa_chunk)\(",
    flags=re.M,
)


def test_core_functions_that_dereference_guest_pointers_say_why_it_is_safe():
    found = set()
    for source in list((PACKAGE / "_core").glob("*.pyx")) + list((PACKAGE / "_core").glob("*.pxd")):
        text = source.read_text()
        for match in UNCHECKED_CODE.finditer(text):
            body_start = text.find("nogil:\n", match.start())
            if body_start < 0 or text.find("\n\n", match.start()) < body_start:
                continue  # a declaration, not a definition
            found.add(match.group(1))
            head = text[body_start : body_start + 400]
            assert "# SAFETY:" in head, f"{source.name}: {match.group(1)} has no SAFETY note"
    assert len(found) >= 12


def test_every_exported_class_and_function_is_documented():
    import importlib
    import inspect

    for init in PACKAGE.rglob("*/__init__.py"):
        parts = init.parent.relative_to(PACKAGE).parts
        if any(part.startswith("_") for part in parts):
            continue
        module = importlib.import_module(".".join(("fastpath", *parts)))
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"
                if inspect.isclass(obj):
                    for attr, member in vars(obj).items():
                        public = not attr.startswith("_")
                        if public and (inspect.isfunction(member) or isinstance(member, property)):
                            assert inspect.getdoc(member), f"{name}.{attr} has no docstring"


# The Numba type each C type of a .pxd declaration crosses as (pointers cross as integers).
_C_TO_NUMBA = {"int": "int32", "int32_t": "int32", "uint32_t": "uint32", "int64_t": "int64",
               "uint64_t": "uint64", "uint16_t": "uint16", "uint8_t": "uint8",
               "size_t": "uint64", "void": "none", "bint": "int32"}


def _numba_type_of(c_type: str) -> str:
    c_type = c_type.replace("const ", "").strip()
    return "uint64" if "*" in c_type else _C_TO_NUMBA.get(c_type, c_type)


def _pxd_signature(decl: str) -> tuple[str, list[str]]:
    match = re.match(r"cdef (?:inline )?(?P<ret>[\w ]+?\**)\s*(?P<name>\w+)\((?P<args>.*)\)",
                     decl)
    args = [a.strip() for a in match["args"].split(",") if a.strip()]
    # Each argument is a type and a name: the type is all but the last word, stars included.
    arg_types = [re.sub(r"\s*\w+$", "", a) if not a.endswith("*") else a for a in args]
    return _numba_type_of(match["ret"]), [_numba_type_of(t) for t in arg_types]


def test_every_core_function_a_kernel_calls_matches_its_pxd_declaration():
    import importlib
    import pkgutil

    from fastpath._numba import CORE_FUNCTIONS

    for module in pkgutil.walk_packages([str(PACKAGE)], "fastpath."):
        importlib.import_module(module.name)
    declared = {}
    for pxd_name, decl in _pxd_function_declarations():
        name = re.match(r"cdef (?:inline )?[\w ]+?\**\s*(\w+)\(", decl)[1]
        if name.startswith("fp_"):
            declared[pxd_name[:-4], name] = _pxd_signature(decl)
    assert len(CORE_FUNCTIONS) > 20
    for module, name, signature in CORE_FUNCTIONS:
        assert (module, name) in declared, f"{name} is not declared in _core/{module}.pxd"
        ret, args = declared[module, name]
        numba_args = [str(t).replace("uintp", "uint64") for t in signature.args]
        numba_ret = str(signature.return_type).replace("uintp", "uint64")
        assert (numba_ret, numba_args) == (ret, args), (
            f"{name}: the kernels declare {numba_ret}({', '.join(numba_args)}), "
            f"_core/{module}.pxd {ret}({', '.join(args)})")


def test_kernels_that_reach_memory_by_raw_address_say_why_it_is_safe():
    # A kernel that makes an array out of an address (carray over a pointer from a port row)
    # has nothing checking the address or the length: its SAFETY note says what keeps them
    # valid, as the core's unchecked functions do.
    found = 0
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            body = ast.get_source_segment(text, node)
            if "carray(" not in body:
                continue
            found += 1
            assert "# SAFETY:" in body, (
                f"{path.relative_to(ROOT)}:{node.lineno} {node.name} makes arrays from raw "
                "addresses without a SAFETY note")
    assert found >= 8


# The rooms of the package, lowest layer first (DESIGN.md, "Layers"): a module imports only
# from its own room and from lower layers. Rooms on one line share a layer and import nothing
# from each other. The base modules (errors, the Numba options) sit below every room.
LAYERS = [
    ["_core"],
    ["hv"],
    ["vring"],
    ["vhost_user"],
    ["devices.net", "devices.blk"],
    ["pmd"],
    ["spdk_like"],
    ["testing"],
    ["scenarios"],
    ["bench"],
    ["commands"],
    ["cli"],
]
BASE = {"errors", "_numba", ""}
LAYER_OF = {room: k for k, rooms in enumerate(LAYERS) for room in rooms}


def _room(module: str) -> str:
    parts = module.split(".")[1:]
    if parts[:1] == ["devices"] and len(parts) > 1:
        return "devices." + parts[1]
    return parts[0] if parts else ""


def _type_checking_only(tree: ast.Module) -> set[int]:
    # The import nodes under `if TYPE_CHECKING:`, which never run.
    return {id(n) for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
            for n in ast.walk(block)}


def _package_imports(runtime_only: bool = False):
    """(importing module, imported module) for every fastpath import inside the package (with
    `runtime_only`, leaving out those made for type checkers alone)."""
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text())
        skipped = _type_checking_only(tree) if runtime_only else set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                # `from fastpath.x import _y` imports the module fastpath.x._y.
                names += [f"{node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "fastpath" or name.startswith("fastpath."):
                    yield module, name


def test_rooms_import_only_from_their_own_and_lower_layers():
    for importer, imported in _package_imports():
        mine, theirs = _room(importer), _room(imported)
        if theirs in BASE or mine == theirs:
            continue
        assert mine in LAYER_OF and theirs in LAYER_OF, f"{importer}: room of {imported}?"
        assert LAYER_OF[theirs] < LAYER_OF[mine], (
            f"{importer} ({mine}) imports {imported} ({theirs}), which is not below it")


def test_no_module_imports_another_rooms_private_module():
    for importer, imported in _package_imports():
        mine, theirs = _room(importer), _room(imported)
        if mine == theirs or theirs in BASE or theirs == "_core":
            continue
        inner = imported.split(".")[1 + theirs.count(".") + 1:]
        assert not any(p.startswith("_") for p in inner), (
            f"{importer} imports {imported}, a private module of {theirs}")


def test_no_modules_import_each_other_round_in_a_cycle():
    # A cycle (pmd's ports, dispatch and kinds once) makes every module of it depend on import
    # order and on imports hidden in functions; packages' __init__ re-exports and imports for
    # type checkers alone do not count.
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts)
               for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for importer, imported in _package_imports(runtime_only=True):
        if importer in modules and imported in modules and importer != imported:
            graph[importer].add(imported)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for imported in sorted(graph[module]):
            assert state.get(imported) != 1, " -> ".join(
                stack[stack.index(imported):] + [imported])
            if imported not in state:
                visit(imported)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
