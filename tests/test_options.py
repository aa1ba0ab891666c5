"""``rsfuse.options``: the option literals written once, in a module that imports neither torch nor rsfuse, and the one
check that refuses other values with a one-line message naming the setting, the value and the allowed ones."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import rsfuse
from rsfuse import options
from rsfuse.options import (
    ATTENTION_BACKENDS,
    BLENDS,
    CANVAS_SOURCES,
    DEFAULT_TEMPLATE,
    IMAGE_PLACEMENTS,
    PADDING_SIDES,
    ROUTER_MODES,
    WINDOW_LAYOUTS,
    check_option,
)

PACKAGE = Path(rsfuse.__file__).parent
REPO = PACKAGE.parent
OPTION_TUPLES = {
    "ATTENTION_BACKENDS": ATTENTION_BACKENDS,
    "IMAGE_PLACEMENTS": IMAGE_PLACEMENTS,
    "WINDOW_LAYOUTS": WINDOW_LAYOUTS,
    "BLENDS": BLENDS,
    "ROUTER_MODES": ROUTER_MODES,
    "CANVAS_SOURCES": CANVAS_SOURCES,
    "PADDING_SIDES": PADDING_SIDES,
}


def test_importing_the_options_imports_no_torch_and_no_other_rsfuse_module():
    code = (
        "import sys, rsfuse.options\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "extra = sorted(name for name in sys.modules if name.startswith('rsfuse.') and name != 'rsfuse.options')\n"
        "assert not extra, extra\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    tree = ast.parse((PACKAGE / "options.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"typing", "collections.abc"}, imported


def test_the_old_homes_re_export_the_one_definition():
    from rsfuse.encoders import stitch, windows
    from rsfuse.injection import router
    from rsfuse.model import config, layout
    from rsfuse.processor import DEFAULT_TEMPLATE as processor_default

    attention = importlib.import_module("rsfuse.ops.attention")  # rsfuse.ops.attention is also the function
    assert config.IMAGE_PLACEMENTS is IMAGE_PLACEMENTS and config.CANVAS_SOURCES is CANVAS_SOURCES
    assert config.ATTENTION_BACKENDS is attention.BACKENDS is ATTENTION_BACKENDS
    assert config.WINDOW_LAYOUTS is windows.WINDOW_LAYOUTS is WINDOW_LAYOUTS
    assert config.BLENDS is stitch.BLENDS is BLENDS and config.ROUTER_MODES is router.ROUTER_MODES is ROUTER_MODES
    assert layout.PADDING_SIDES is PADDING_SIDES and processor_default is DEFAULT_TEMPLATE
    assert set(config.CHOICES.values()) <= set(OPTION_TUPLES.values())


def test_the_default_template_is_a_known_template():
    from rsfuse.llm.templates import TEMPLATES, VICUNA_V1

    assert TEMPLATES[DEFAULT_TEMPLATE] is VICUNA_V1


def _literals(tree: ast.AST):
    """Every tuple/list of string constants and every string constant of a module (docstrings are not equal to a
    bare option value, so they do not count)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
            isinstance(item, ast.Constant) and isinstance(item.value, str) for item in node.elts
        ):
            yield node.lineno, frozenset(item.value for item in node.elts)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


# The same words meaning something else: the sides of a synthetic scene a coast lies on.
OTHER_MEANINGS = {("rsfuse/synthetic/layouts.py", "PADDING_SIDES")}


def test_no_other_rsfuse_file_writes_an_option_tuple_or_the_default_template():
    tuples = {frozenset(values): name for name, values in OPTION_TUPLES.items()}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "options.py" and path.parent == PACKAGE:
            continue
        for line, literal in _literals(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO)}:{line}"
            if isinstance(literal, frozenset) and literal in tuples:
                if (str(path.relative_to(REPO)), tuples[literal]) in OTHER_MEANINGS:
                    continue
                found.append(f"{where} writes {tuples[literal]}")
            elif literal == DEFAULT_TEMPLATE and path.name != "templates.py":  # the template's own name stays there
                found.append(f"{where} writes {DEFAULT_TEMPLATE!r} (use rsfuse.options.DEFAULT_TEMPLATE)")
    assert not found, "\n".join(found)


def test_check_option_names_the_setting_the_value_and_the_allowed_ones():
    check_option("hann", BLENDS, "blend")
    for bad in ("gauss", None, ["hann"], 3):
        with pytest.raises(ValueError) as error:
            check_option(bad, BLENDS, "MultiScaleCanvas: blend")
        assert str(error.value) == f"MultiScaleCanvas: blend must be one of ('hann', 'mean'), got {bad!r}"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: __import__("rsfuse").MFRSVLMConfig.tiny(window_layout="diagonal"),
         "MFRSVLMConfig.window_layout must be one of ('spatial', 'reference'), got 'diagonal'"),
        (lambda: __import__("rsfuse.injection", fromlist=["Router"]).Router(8, mode="stack"),
         "Router: mode must be one of ('sample', 'token'), got 'stack'"),
        (lambda: __import__("rsfuse.injection", fromlist=["Router"]).Router(8, attention_backend="flash"),
         "Router: attention_backend must be one of ('auto', 'sdpa', 'xformers', 'math'), got 'flash'"),
    ],
)
def test_components_refuse_with_the_shared_message(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert str(error.value) == message
