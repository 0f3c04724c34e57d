"""The package's shape, checked from the source: layers, the CLI on top, no re-exports.

Every module under ``sleap_rtc/`` and ``sleap_rtc_proto/`` is parsed (``ast``);
every import counts, including lazy imports inside functions and imports under
``if TYPE_CHECKING:``.

(a) Nothing outside ``sleap_rtc/cli`` imports ``sleap_rtc.cli``.
(b) No import goes up the layer order of :data:`LAYERS`.
(c) No re-exports: ``from sleap_rtc[...].mod import Name`` (anywhere in the
    packages, ``tests/``, ``bench/``, ``scripts/``) names a ``Name`` that ``mod``
    defines, or a submodule, unless ``mod`` is a package ``__init__`` or one of
    the public :data:`DOORS`; and no other module lists in ``__all__`` a name it
    only imports.

The checks are functions of a source root, so the last tests run them on a
small tree with one violation of each kind: every check can fail.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The layers, bottom to top. A module may import modules of its own layer and of the
#: layers below it, never of a layer above. ``sleap_rtc`` alone is the root package
#: (``__version__``); each other entry covers a package or module and everything in it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("protocol", ("sleap_rtc_proto",)),
    ("auth and config", ("sleap_rtc", "sleap_rtc.auth", "sleap_rtc.config", "sleap_rtc.paths")),
    ("transport and signaling", ("sleap_rtc.transport", "sleap_rtc.signaling")),
    (
        "sessions and services",
        (
            "sleap_rtc.client",
            "sleap_rtc.worker",
            "sleap_rtc.jobs",
            "sleap_rtc.capture",
            "sleap_rtc.inspect",
        ),
    ),
    ("doors", ("sleap_rtc.api", "sleap_rtc.gui", "sleap_rtc.demo")),
    ("command line", ("sleap_rtc.cli",)),
)

#: Known upward imports in modules owned elsewhere: (importing module, imported module).
#: Each entry says why it is tolerated; the goal is an empty set.
ALLOWED_UPWARD: frozenset[tuple[str, str]] = frozenset()

#: Known ``__all__`` entries naming an imported name, in modules owned elsewhere:
#: (module, name). Each entry says why it is tolerated; the goal is an empty set.
ALLOWED_ALL_IMPORTS: frozenset[tuple[str, str]] = frozenset(
    {
    }
)

#: The public doors: they may hand on names they import (the seed's integration points).
DOORS = frozenset(
    {
        "sleap_rtc.api",
        "sleap_rtc.gui.runners",
        "sleap_rtc.jobs.spec",
        "sleap_rtc.worker.worker_class",
    }
)

#: Trees whose modules are layered (and must not import the CLI).
PACKAGES = ("sleap_rtc", "sleap_rtc_proto")
#: Trees whose ``from sleap_rtc... import Name`` lines are checked for re-exports.
IMPORTERS = (*PACKAGES, "tests", "bench", "scripts")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module

    def where(self, root: Path, node: ast.AST) -> str:
        return f"{self.path.relative_to(root)}:{getattr(node, 'lineno', 0)}"


@dataclass(frozen=True)
class Import:
    """One imported module: ``target`` (``from X import N`` is ``X.N`` when N is a module)."""

    module: Module
    node: ast.Import | ast.ImportFrom
    target: str

    def describe(self, root: Path) -> str:
        where = self.module.where(root, self.node)
        return f"{where} {self.module.name}: `{ast.unparse(self.node)}`"


def modules(root: Path, tops: tuple[str, ...]) -> Iterator[Module]:
    for top in tops:
        for path in sorted((root / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            yield Module(name, path, is_package, tree)


def module_file(root: Path, name: str) -> Path | None:
    """The file of module ``name`` under ``root`` (``x/y.py`` or ``x/y/__init__.py``)."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def absolute(module: Module, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, with relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def ours(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in PACKAGES)


def imports(root: Path, module: Module) -> Iterator[Import]:
    """Every import of a sleap_rtc / sleap_rtc_proto module in ``module``, at any depth."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if ours(alias.name):
                    yield Import(module, node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = absolute(module, node)
            if not ours(source):
                continue
            submodules = [
                f"{source}.{a.name}" for a in node.names if module_file(root, f"{source}.{a.name}")
            ]
            yield from (Import(module, node, target) for target in submodules)
            if len(submodules) < len(node.names):
                yield Import(module, node, source)


def layer_of(name: str) -> int | None:
    """The index in :data:`LAYERS` of module ``name`` (the longest matching entry)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix == "sleap_rtc"
            matches = name == prefix or (not exact_only and name.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _targets(node: ast.expr) -> set[str]:
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Tuple | ast.List):
        return set().union(*(_targets(e) for e in node.elts))
    if isinstance(node, ast.Starred):
        return _targets(node.value)
    return set()


def defined_names(tree: ast.Module) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments), at any
    depth of if/try/with/for blocks; names it only imports are not among them."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    names.update(_targets(target))
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                names.update(_targets(node.target))
            elif isinstance(node, ast.For | ast.AsyncFor):
                names.update(_targets(node.target))
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.With | ast.AsyncWith):
                for item in node.items:
                    if item.optional_vars is not None:
                        names.update(_targets(item.optional_vars))
                visit(node.body)
            elif isinstance(node, ast.If | ast.While):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return names


@cache
def definitions(root: Path, name: str) -> frozenset[str]:
    """What module ``name`` defines; a generated module's stub (``x_pb2.pyi``) counts too."""
    path = module_file(root, name)
    if path is None:
        return frozenset()
    found = defined_names(ast.parse(path.read_text(encoding="utf-8")))
    stub = path.with_suffix(".pyi")
    if stub.is_file():
        found |= defined_names(ast.parse(stub.read_text(encoding="utf-8")))
    return frozenset(found)


def imported_from(root: Path, module: str, name: str) -> str | None:
    """Where ``module`` imports ``name`` from (to say where to import it instead)."""
    path = module_file(root, module)
    if path is None:
        return None
    parsed = Module(module, path, path.name == "__init__.py", ast.parse(path.read_text()))
    for node in ast.walk(parsed.tree):
        if isinstance(node, ast.ImportFrom) and any(
            (a.asname or a.name) == name for a in node.names
        ):
            return absolute(parsed, node)
    return None


# ----------------------------------------------------------------------------- the checks


def cli_importers(root: Path) -> list[str]:
    """(a) Modules outside sleap_rtc/cli that import sleap_rtc.cli."""
    found = []
    for module in modules(root, PACKAGES):
        if layer_of(module.name) == layer_of("sleap_rtc.cli"):
            continue
        for imp in imports(root, module):
            if imp.target == "sleap_rtc.cli" or imp.target.startswith("sleap_rtc.cli."):
                found.append(f"{imp.describe(root)} imports the CLI ({imp.target})")
    return found


def unlayered(root: Path) -> list[str]:
    """Modules of the packages that no entry of LAYERS covers."""
    return [
        f"{module.path.relative_to(root)}: {module.name} is in no layer (add it to LAYERS)"
        for module in modules(root, PACKAGES)
        if layer_of(module.name) is None
    ]


def upward_imports(root: Path) -> list[str]:
    """(b) Imports of a module in a higher layer than the importer's."""
    found = []
    for module in modules(root, PACKAGES):
        own = layer_of(module.name)
        if own is None:
            continue
        for imp in imports(root, module):
            theirs = layer_of(imp.target)
            if theirs is None or theirs <= own or (module.name, imp.target) in ALLOWED_UPWARD:
                continue
            found.append(
                f"{imp.describe(root)} goes up from layer {own} ({LAYERS[own][0]}) to "
                f"layer {theirs} ({LAYERS[theirs][0]}): {imp.target}"
            )
    return found


def from_imports(module: Module) -> Iterator[tuple[ast.ImportFrom, str]]:
    """The module's ``from ... import`` lines, and those of the Python scripts it holds in
    string literals (a test's subprocess script), each with where it is (``path:line``)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            yield node, f"{getattr(node, 'lineno', 0)}"
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "import" in node.value
            and "sleap_rtc" in node.value
        ):
            try:
                script = ast.parse(textwrap.dedent(node.value))
            except SyntaxError:
                continue
            for inner in ast.walk(script):
                if isinstance(inner, ast.ImportFrom):
                    yield inner, f"{node.lineno + inner.lineno - 1} (in a script string)"


def re_exported_imports(root: Path) -> list[str]:
    """(c) ``from mod import Name`` where mod does not define Name (and may not hand it on)."""
    found = []
    for module in modules(root, tuple(t for t in IMPORTERS if (root / t).is_dir())):
        for node, line in from_imports(module):
            source = absolute(module, node)
            if not ours(source) or source in DOORS:
                continue
            path = module_file(root, source)
            where = f"{module.path.relative_to(root)}:{line} {module.name}: `{ast.unparse(node)}`"
            if path is None:
                found.append(f"{where}: there is no module {source}")
                continue
            if path.name == "__init__.py":
                continue
            for alias in node.names:
                name = alias.name
                if name == "*" or name in definitions(root, source):
                    continue
                if module_file(root, f"{source}.{name}") is not None:
                    continue
                origin = imported_from(root, source, name)
                hint = f"; import it from {origin}" if origin else ""
                found.append(f"{where}: {source} does not define {name}{hint}")
    return found


def all_lists_imported_names(
    root: Path, allowed: frozenset[tuple[str, str]] = ALLOWED_ALL_IMPORTS
) -> list[str]:
    """(c) ``__all__`` entries a (non-__init__, non-door) module only imports."""
    found = []
    for module in modules(root, PACKAGES):
        if module.is_package or module.name in DOORS:
            continue
        defined = defined_names(module.tree)
        for node in module.tree.body:
            value: ast.expr | None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets, value = [node.target], node.value
            else:
                continue
            if not any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                continue
            if not isinstance(value, ast.List | ast.Tuple):
                continue
            for element in value.elts:
                if not isinstance(element, ast.Constant) or not isinstance(element.value, str):
                    continue
                name = element.value
                if name in defined or module_file(root, f"{module.name}.{name}") is not None:
                    continue
                if (module.name, name) in allowed:
                    continue
                found.append(
                    f"{module.where(root, node)} {module.name}: __all__ lists {name!r}, "
                    "which it only imports (export it from where it is defined)"
                )
    return found


def _report(found: list[str]) -> str:
    return "\n".join(found)


# ----------------------------------------------------------------------------- the tree


def test_nothing_outside_the_cli_imports_the_cli() -> None:
    found = cli_importers(REPO)
    assert not found, _report(found)


def test_every_module_is_in_a_layer() -> None:
    found = unlayered(REPO)
    assert not found, _report(found)


def test_no_import_goes_up_the_layers() -> None:
    found = upward_imports(REPO)
    assert not found, _report(found)


def test_names_are_imported_from_the_module_that_defines_them() -> None:
    found = re_exported_imports(REPO)
    assert not found, _report(found)


def test_no_module_exports_a_name_it_only_imports() -> None:
    found = all_lists_imported_names(REPO)
    assert not found, _report(found)


def test_allow_list_entries_are_still_needed() -> None:
    """An allow-list entry whose violation is gone must go too."""
    seen = {
        (module.name, imp.target)
        for module in modules(REPO, PACKAGES)
        for imp in imports(REPO, module)
    }
    stale = sorted(ALLOWED_UPWARD - seen)
    assert not stale, f"remove these ALLOWED_UPWARD entries, no longer needed: {stale}"
    listed = set(all_lists_imported_names(REPO, allowed=frozenset()))
    stale = sorted(
        (mod, name)
        for mod, name in ALLOWED_ALL_IMPORTS
        if not any(f" {mod}: __all__ lists {name!r}," in line for line in listed)
    )
    assert not stale, f"remove these ALLOWED_ALL_IMPORTS entries, no longer needed: {stale}"


# ----------------------------------------------------------------------------- the checks can fail

#: A tree with one violation of each kind; ``{pkg}`` is sleap_rtc (written so that these
#: strings are not taken for scripts of this module by the check itself).
BAD_TREE = {
    "{pkg}/__init__.py": '__version__ = "0"\n',
    "{pkg}/auth/__init__.py": "",
    "{pkg}/auth/tokens.py": "class Token:\n    pass\n",
    "{pkg}/auth/login.py": (
        "def login():\n    from {pkg}.signaling.client import Client\n    return Client\n"
    ),
    "{pkg}/signaling/__init__.py": "",
    "{pkg}/signaling/client.py": (
        "from {pkg}.auth.tokens import Token\n\n"
        "class Client:\n    pass\n\n"
        '__all__ = ["Client", "Token"]\n'
    ),
    "{pkg}/cli/__init__.py": "",
    "{pkg}/cli/exits.py": "EXIT = 0\n",
    "{pkg}/demo.py": "def run():\n    from {pkg}.cli import exits\n    return exits\n",
    "{pkg}/extra/__init__.py": "",
    "{pkg}_proto/__init__.py": "",
    "{pkg}_proto/codec.py": "from {pkg} import __version__\n",
    "tests/test_bad.py": (
        "from {pkg}.signaling.client import Client, Token\n"
        "from {pkg}.cli.peers import run_worker\n"
        'SCRIPT = """\nimport sys\nfrom {pkg}.auth.login import Client\n"""\n'
    ),
}


def _bad_tree(tmp_path: Path) -> Path:
    for name, text in BAD_TREE.items():
        path = tmp_path / name.format(pkg="sleap_rtc")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(pkg="sleap_rtc"))
    definitions.cache_clear()
    return tmp_path


def test_the_cli_check_can_fail(tmp_path: Path) -> None:
    found = cli_importers(_bad_tree(tmp_path))
    assert len(found) == 1, found
    assert "sleap_rtc/demo.py:2 sleap_rtc.demo" in found[0]
    assert "`from sleap_rtc.cli import exits`" in found[0]


def test_the_layer_checks_can_fail(tmp_path: Path) -> None:
    root = _bad_tree(tmp_path)
    found = upward_imports(root)
    assert any(
        "sleap_rtc.auth.login" in f and "`from sleap_rtc.signaling.client import Client`" in f
        for f in found
    ), found
    assert any("sleap_rtc.demo" in f and "sleap_rtc.cli.exits" in f for f in found), found
    assert any("sleap_rtc_proto.codec" in f and "layer 0" in f for f in found), found
    assert len(found) == 3, found
    assert unlayered(root) == [
        "sleap_rtc/extra/__init__.py: sleap_rtc.extra is in no layer (add it to LAYERS)"
    ]


def test_the_re_export_checks_can_fail(tmp_path: Path) -> None:
    root = _bad_tree(tmp_path)
    found = re_exported_imports(root)
    assert found == [
        "tests/test_bad.py:1 tests.test_bad: `from sleap_rtc.signaling.client import Client, "
        "Token`: sleap_rtc.signaling.client does not define Token; import it from "
        "sleap_rtc.auth.tokens",
        "tests/test_bad.py:2 tests.test_bad: `from sleap_rtc.cli.peers import run_worker`: "
        "there is no module sleap_rtc.cli.peers",
        "tests/test_bad.py:5 (in a script string) tests.test_bad: `from sleap_rtc.auth.login "
        "import Client`: sleap_rtc.auth.login does not define Client; import it from "
        "sleap_rtc.signaling.client",
    ]
    listed = all_lists_imported_names(root)
    assert len(listed) == 1 and "sleap_rtc.signaling.client" in listed[0], listed
    assert "__all__ lists 'Token'" in listed[0]
    definitions.cache_clear()
