"""What every task named ``<family>:<base>[+key=value...]`` shares (Lab2D levels, MuJoCo bodies, classic control).

Such a task is a base (a level, a body, a system) and its ``settings``: sorted ``(key, value)`` string pairs,
written ``+key=value`` after the base in its name (``game``) and in its file-system ``slug``. A dataclass of
such a task names its base field and its family; this mixin gives it the rest of the task protocol.
"""

from __future__ import annotations

from typing import ClassVar


class NamedTask:
    """Mixin of the task protocol for ``<family>:<base>[+key=value...]`` tasks: ``game``, ``family``, ``slug``,
    ``same_task``. A subclass sets :attr:`FAMILY` and :attr:`BASE_FIELD` (the dataclass field holding the base)
    and has a ``settings`` field."""

    FAMILY: ClassVar[str]
    BASE_FIELD: ClassVar[str]
    settings: tuple[tuple[str, str], ...]

    @property
    def base(self) -> str:
        return getattr(self, self.BASE_FIELD)

    @property
    def _suffix(self) -> str:
        return "".join(f"+{k}={v}" for k, v in self.settings)

    @property
    def family(self) -> str:
        return self.FAMILY

    @property
    def game(self) -> str:
        return f"{self.FAMILY}:{self.base}{self._suffix}"

    @property
    def slug(self) -> str:
        # bases use underscores, never hyphens, so ':' -> '-' reads back; settings keep their own spelling
        return f"{self.FAMILY}-{self.base.replace(':', '-')}{self._suffix}"

    def same_task(self, other: object) -> bool:
        return type(other) is type(self) and (other.base, other.settings) == (self.base, self.settings)
