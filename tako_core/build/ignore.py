"""Which paths of a project are left out of the artifact: `.gitignore` files plus a fixed deny list.

Git semantics, implemented with pathspec's `GitIgnoreSpec`: each `.gitignore` applies to its own
directory and below, patterns relative to it; a deeper file overrides a shallower one; within a
file the last matching pattern wins (so `!negation` works). Excluded directories are pruned by the
walker, which is also git's rule: nothing under an excluded directory can be re-included.
`.gitignore` files above the project directory, up to the git work tree's top, apply too (a
monorepo's root file usually names `node_modules` or `dist`). `.git/info/exclude` and the user's
global excludes file are not read: the artifact must not depend on one machine's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pathspec

from tako_core.build.errors import SourceSetError

# Never shipped, whatever `.gitignore` says (negations cannot bring them back): VCS data, tako's own
# state (secrets live in .tako/), local env files, dependency and bytecode caches rebuilt on the server.
ALWAYS_EXCLUDED_NAMES = frozenset({".git", ".tako", "node_modules", "__pycache__", ".venv"})
ALWAYS_EXCLUDED_PREFIX = ".env"
# The artifact's own manifest sits at the archive root; a project file of that name would shadow it.
MANIFEST_NAME = ".tako-manifest.json"


def always_excluded(name: str, *, at_root: bool) -> bool:
    """True for a file or directory name that is never part of the source set."""
    if name in ALWAYS_EXCLUDED_NAMES or name.startswith(ALWAYS_EXCLUDED_PREFIX):
        return True
    return at_root and name == MANIFEST_NAME


@dataclass(frozen=True)
class _Level:
    base: str  # directory of the .gitignore, posix, relative to the anchor ("" = the anchor)
    spec: pathspec.GitIgnoreSpec


@dataclass(frozen=True)
class IgnoreRules:
    """The `.gitignore` files in force for one directory, shallowest first.

    Paths given to `ignored` are posix paths relative to the anchor: the git work tree's top when
    the project is in one, else the project directory.
    """

    levels: tuple[_Level, ...] = ()

    def entering(self, directory: Path, rel: str) -> IgnoreRules:
        """The rules for `directory` (at anchor-relative `rel`): these plus its own `.gitignore`."""
        spec = _read_gitignore(directory / ".gitignore")
        if spec is None:
            return self
        return IgnoreRules((*self.levels, _Level(rel, spec)))

    def ignored(self, rel: str, *, is_dir: bool) -> bool:
        # The deepest file with an opinion decides; GitIgnoreSpec already applies last-match-wins.
        for level in reversed(self.levels):
            if level.base:
                if not rel.startswith(level.base + "/"):
                    continue
                sub = rel[len(level.base) + 1 :]
            else:
                sub = rel
            result = level.spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                return bool(result.include)
        return False


def rules_above(anchor: Path, project_dir: Path) -> IgnoreRules:
    """The rules in force at `project_dir` from `.gitignore` files between `anchor` and it."""
    rules = IgnoreRules()
    parts = project_dir.relative_to(anchor).parts
    for depth in range(len(parts)):  # the anchor itself, then each directory down to the parent
        rules = rules.entering(anchor.joinpath(*parts[:depth]), "/".join(parts[:depth]))
    return rules


def _read_gitignore(path: Path) -> pathspec.GitIgnoreSpec | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        raise SourceSetError(
            f"cannot read {path}: {exc.strerror}", hint="make the file readable or remove it"
        ) from exc
    return pathspec.GitIgnoreSpec.from_lines(text.splitlines())
