"""A stack of undos: each change registers its undo the moment it succeeded; unwinding
runs them in reverse, every one whatever the others did, and says what was undone."""
from __future__ import annotations


class UndoStack:
    def __init__(self):
        self._items: list[tuple[str | None, object]] = []

    def push(self, what: str | None, fn) -> None:
        """Register `fn` (`what`: how unwind() reports it; None: only its failure is)."""
        self._items.append((what, fn))

    def run_now(self, fn) -> None:
        """Run a registered undo now (once): it leaves the stack."""
        for i, (_, f) in enumerate(self._items):
            if f == fn:
                del self._items[i]
                fn()
                return

    def unwind(self) -> list[str]:
        """Run every undo in reverse; what was undone, and what failed to be, in that order."""
        undone = []
        while self._items:
            what, fn = self._items.pop()
            try:
                fn()
                if what:
                    undone.append(what)
            except Exception as e:          # keep undoing the rest
                undone.append(f"FAILED to undo ({what or getattr(fn, '__qualname__', fn)}): {e}")
        return undone

    def __len__(self) -> int:
        return len(self._items)
