"""The project uses faust, mode and aiokafka through their public APIs only: a patch
release may rename or re-purpose any private attribute, and exactness must not hang on
one. Scanned statically (AST) over every module of the project's packages:

- no `x._name` on anything but `self`/`cls` (a library object reached through a
  variable, a module or a call), except the few standard-library names below;
- no class derived from a faust/mode/aiokafka class touches `self._name` or defines a
  `_name` method: in such a subclass `self` *is* the library's object, so this is how an
  override of `_drain_messages` or a write of `self._acked` would hide.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "ingest", "streams", "sinks", "api", "schemas", "quip")
LIBRARIES = ("faust", "mode", "aiokafka")
# Standard-library names spelled with an underscore: os._exit is the documented way to
# exit at once, namedtuple's _replace/_asdict are its public API, zlib._Decompress is the
# only name of the decompressor type (for annotations).
ALLOWED = {("os", "_exit"), ("zlib", "_Decompress")}
ALLOWED_ANY = {"_replace", "_asdict", "_fields"}


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _library_names(tree: ast.Module) -> set[str]:
    """Names this module binds to something imported from faust, mode or aiokafka."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    names.add((alias.asname or alias.name).split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in LIBRARIES
        ):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(source: str, where: str) -> Iterator[str]:
    tree = ast.parse(source)
    library_names = _library_names(tree)
    library_classes = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(_root_name(base) in library_names for base in node.bases)
    ]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if node.attr in ALLOWED_ANY or (_root_name(owner), node.attr) in ALLOWED:
            continue
        yield f"{where}:{node.lineno}: {ast.unparse(node)}"
    for cls in library_classes:
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _private(node.name):
                yield f"{where}:{node.lineno}: {cls.name} defines {node.name}"
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                yield f"{where}:{node.lineno}: {cls.name} uses {ast.unparse(node)}"


def test_no_module_touches_a_private_attribute_of_a_library_object() -> None:
    found = [
        violation
        for path in _modules()
        for violation in violations(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(
            "def f(consumer):\n    consumer._isolation_level = 'read_committed'\n",
            id="write through a variable",
        ),
        pytest.param(
            "def f(app):\n    return app.consumer._committed_offset[0]\n", id="read through a chain"
        ),
        pytest.param(
            "from faust.transport.drivers import aiokafka as d\n"
            "class C(d.Consumer):\n    async def _drain_messages(self, f):\n        pass\n",
            id="override of a private method",
        ),
        pytest.param(
            "from faust.transport.drivers import aiokafka as d\n"
            "class C(d.Consumer):\n    def ack(self, tp):\n        self._acked[tp].append(1)\n",
            id="private attribute of self in a library subclass",
        ),
        pytest.param(
            "import aiokafka\nclass C(aiokafka.AIOKafkaConsumer):\n"
            "    def f(self):\n        return self._fetcher\n",
            id="subclass through the module",
        ),
    ],
)
def test_the_scan_catches(source: str) -> None:
    assert list(violations(source, "example.py")) != []


def test_the_scan_lets_the_projects_own_private_attributes_be() -> None:
    source = (
        "import os\nfrom aiokafka import ConsumerRebalanceListener\n"
        "class Listener(ConsumerRebalanceListener):\n"
        "    async def on_partitions_revoked(self, revoked):\n        await self.revoked(revoked)\n"
        "class Mine:\n    def __init__(self):\n        self._queue = []\n"
        "def later():\n    os._exit(70)\n"
    )
    assert list(violations(source, "example.py")) == []
