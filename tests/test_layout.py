"""The import contract of the house: core imports no other wing, the runtime never imports the
training wing or the clinic services, the clinic services never import the training wing,
TensorFlow is imported only where a rule below names it, and Dask only by the one module that
scores on it (itself imported only on the ``--dask`` path).

Read from the source with ``ast``, so a forbidden import fails here even on a code path no
other test runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pneumocnn"
HEAVY = ("tensorflow", "keras", "tf_keras")
DASK = ("dask", "distributed")
DASK_MODULE = "clinic/dask_scoring.py"  # the only importer of Dask (pneumocnn[dask])

# The only places outside the training wing where TensorFlow or Keras may be imported, each
# inside a function so that it happens only on that path: the model-file schema and the
# interpreter as fallbacks when LiteRT is not installed, and Keras to run a ``.keras`` file.
TENSORFLOW_ALLOWED = {
    ("core/modelfile.py", "_schema"),
    ("runtime/backends.py", "_interpreter_class"),
    ("runtime/backends.py", "KerasBackend.__init__"),
    ("runtime/backends.py", "KerasBackend.class_activation"),
}


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, enclosing function or None)`` for every import statement in ``path``."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, scope: list[str], in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, ".".join(scope) if in_function else None) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, ".".join(scope) if in_function else None))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, [*scope, child.name], True)
            elif isinstance(child, ast.ClassDef):
                visit(child, [*scope, child.name], in_function)
            else:
                visit(child, scope, in_function)

    visit(ast.parse(path.read_text(), str(path)), [], False)
    return found


def _modules(wing: str) -> list[Path]:
    return sorted((PACKAGE / wing).glob("*.py"))


def _is(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_three_wings_exist_and_hold_modules():
    for wing in ("core", "runtime", "clinic", "training"):
        assert len(_modules(wing)) > 2, wing
    assert not [p.name for p in PACKAGE.glob("*.py")
                if p.name not in ("__init__.py", "__main__.py", "_version.py", "cli.py")]


@pytest.mark.parametrize("path", _modules("core"), ids=lambda p: p.name)
def test_core_imports_no_other_wing(path):
    wrong = [m for m, _ in _imports(path)
             if _is(m, "pneumocnn.runtime", "pneumocnn.clinic", "pneumocnn.training")]
    assert not wrong, f"{path.name} imports {wrong}"


@pytest.mark.parametrize("path", _modules("runtime"), ids=lambda p: p.name)
def test_runtime_never_imports_training_or_the_clinic(path):
    wrong = [m for m, _ in _imports(path) if _is(m, "pneumocnn.training", "pneumocnn.clinic")]
    assert not wrong, f"{path.name} imports {wrong}"


@pytest.mark.parametrize("path", _modules("clinic"), ids=lambda p: p.name)
def test_clinic_never_imports_training(path):
    wrong = [m for m, _ in _imports(path) if _is(m, "pneumocnn.training")]
    assert not wrong, f"{path.name} imports {wrong}"


# the command line (cli.py and its verbs) sits over the public API, as any user of it does
COMMAND_LINE = [PACKAGE / "cli.py", *sorted((PACKAGE / "commands").glob("*.py"))]
API_USERS = {PACKAGE / "__init__.py", PACKAGE / "__main__.py", *COMMAND_LINE}


@pytest.mark.parametrize("path", sorted(set(PACKAGE.rglob("*.py")) - API_USERS),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_the_package_root(path):
    """The root imports the wings, never the other way round (``__version__`` comes from
    ``pneumocnn._version``); only the command line uses the root's public API."""
    wrong = [m for m, _ in _imports(path) if m == "pneumocnn"]
    assert not wrong, f"{path.relative_to(PACKAGE)} imports from the package root"


@pytest.mark.parametrize("path", _modules("core") + _modules("runtime") + _modules("clinic")
                         + [PACKAGE / "__init__.py"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tensorflow_only_where_the_contract_allows_it(path):
    name = f"{path.parent.name}/{path.name}"
    wrong = [(m, scope) for m, scope in _imports(path)
             if _is(m, *HEAVY) and (name, scope) not in TENSORFLOW_ALLOWED]
    assert not wrong, f"{name} imports {wrong} outside the allowed functions"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_dask_only_in_its_module_and_that_module_only_on_the_dask_path(path):
    name = str(path.relative_to(PACKAGE))
    if name != DASK_MODULE:
        assert not [m for m, _ in _imports(path) if _is(m, *DASK)], f"{name} imports Dask"
    lazily = [scope for m, scope in _imports(path) if _is(m, "pneumocnn.clinic.dask_scoring")]
    assert None not in lazily, f"{name} imports pneumocnn.clinic.dask_scoring at module level"


def test_core_runs_no_interpreter():
    for path in _modules("core"):
        wrong = [m for m, _ in _imports(path) if _is(m, "ai_edge_litert.interpreter", "tflite_runtime")]
        assert not wrong, f"{path.name} imports {wrong}"


@pytest.mark.parametrize("path", COMMAND_LINE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_command_line_parser_needs_no_training_code(path):
    imported = {m for m, scope in _imports(path) if scope is None}
    assert not [m for m in imported if _is(m, "pneumocnn.training") and m != "pneumocnn.training.settings"]


@pytest.mark.parametrize("wing", ["core", "runtime", "clinic", "training"])
def test_no_wing_imports_the_command_line(wing):
    for path in _modules(wing):
        wrong = [m for m, _ in _imports(path) if _is(m, "pneumocnn.cli", "pneumocnn.commands")]
        assert not wrong, f"{wing}/{path.name} imports {wrong}"


def test_inference_path_works_with_tensorflow_absent(tmp_path):
    """``import pneumocnn``, ``load``, ``predict``, ``evaluate`` of a ``.tflite`` and the CLI
    parser, in a fresh interpreter where importing TensorFlow, Keras or Dask fails."""
    from helpers import real_images

    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / label).mkdir()
        for path in real_images(label, 2):
            (tmp_path / label / path.name).write_bytes(path.read_bytes())
    code = textwrap.dedent(f"""
        import sys
        for name in {HEAVY + DASK!r}:
            sys.modules[name] = None
        import pneumocnn
        from pneumocnn import cli
        model = pneumocnn.load()
        print(model.predict({str(tmp_path / "NORMAL")!r})[0].label)
        print(pneumocnn.evaluate(model, {str(tmp_path)!r}).metrics["n"])
        cli._parser().parse_args(["train", "data", "--epochs", "1"])
        print(cli.main(["predict", {str(tmp_path)!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] in ("NORMAL", "PNEUMONIA") and lines[1] == "4", result.stdout
    assert result.stdout.rstrip().endswith("0")


@pytest.mark.parametrize("blocked", [("distributed",), DASK])
def test_without_dask_predict_dask_names_the_extra(blocked):
    """Where Dask is not installed, ``predict --dask`` exits 2 with an error naming
    ``pneumocnn[dask]``, and ``predict`` without it works."""
    from helpers import TINY_INT8, real_images

    image = str(real_images("NORMAL", 1)[0])
    code = textwrap.dedent(f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None
        from pneumocnn.cli import main
        assert main(["predict", {image!r}, "--model", {str(TINY_INT8)!r}]) == 0
        print(main(["predict", {image!r}, "--model", {str(TINY_INT8)!r}, "--dask", "local:1"]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "2"
    assert "scoring on Dask needs dask and distributed: pip install 'pneumocnn[dask]'" in result.stderr
