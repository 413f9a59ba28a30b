"""Load a search-space file (the default one, or a user's ``--space``) and check its contract.

The space's code travels with the study (its source is stored as a study attribute) and into
every trial's architecture file, so a trial can be rebuilt, and its winner exported, from the
study alone. That is why a space file may import anything but the harness.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from harness.errors import HarnessError

DEFAULT_SPACE = Path(__file__).with_name("space.py")
HOW_TO = ("A space file defines suggest(trial) -> dict and build(choices, block_out_channels, device) -> nn.Module "
          "(optionally infeasible(choices, block_out_channels) and baselines(layers_per_block)) and imports nothing "
          "from the harness; see 'Writing a search space' in the README and harness/search/space.py.")


@dataclass(frozen=True)
class SpaceFile:
    path: Path
    source: str
    module: ModuleType

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def suggest(self, trial) -> dict:
        return self.module.suggest(trial)

    def build(self, choices: dict, block_out_channels: tuple[int, ...], device="cpu"):
        return self.module.build(choices, block_out_channels, device)

    def infeasible(self, choices: dict, block_out_channels: tuple[int, ...]) -> str | None:
        check = getattr(self.module, "infeasible", None)
        return check(choices, block_out_channels) if check else None

    def baselines(self, layers_per_block: int) -> dict[str, dict]:
        make = getattr(self.module, "baselines", None)
        return make(layers_per_block) if make else {}


def load_space(path: str | Path | None = None) -> SpaceFile:
    """The space in ``path`` (default: the harness's U-Net space), or a one-paragraph error."""
    path = Path(path).expanduser() if path else DEFAULT_SPACE
    if not path.is_file():
        raise HarnessError(f"The search space file {path} does not exist. {HOW_TO}")
    source = path.read_text()
    return space_from_source(source, path)


def space_from_source(source: str, path: Path) -> SpaceFile:
    def broken(why: str) -> HarnessError:
        return HarnessError(f"The search space file {path} cannot be used: {why}. {HOW_TO}")

    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise broken(f"a syntax error at line {exc.lineno} ({exc.msg})") from None
    if any(name == "harness" or name.startswith("harness.") for name in _imported_modules(tree)):
        raise broken("it imports the harness, so a trial's architecture file exported from it would not stand alone")
    spec = importlib.util.spec_from_loader(f"harness_search_space_{path.stem}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    try:
        exec(compile(tree, str(path), "exec"), module.__dict__)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise broken(f"running it raised {type(exc).__name__}: {exc} (line {where.lineno})") from None
    missing = [name for name in ("suggest", "build") if not callable(getattr(module, name, None))]
    if missing:
        raise broken(f"it does not define {' and '.join(missing)}()")
    return SpaceFile(path.resolve(), source, module)


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names
