# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""What every edgeml.fleet module shares (private to the collection).

``EdgeMLModule`` wraps (by composition) an ``AnsibleModule``: it checks the optional
Python dependencies a module needs, turns ``EdgeMLError`` into ``fail_json`` with a
message that says what is wrong and how to fix it, and builds diffs only when the
user asked for them (``--diff``). Stdlib and ansible imports only.
"""

from __future__ import annotations

import typing as t

from ansible.module_utils.basic import AnsibleModule, missing_required_lib


class EdgeMLError(Exception):
    """An error the user can act on.

    ``msg`` says what is wrong, ``hint`` how to fix it; ``details`` are returned
    beside the message in the failed result.
    """

    def __init__(self, msg: str, hint: str | None = None, **details: t.Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        if self.hint:
            return f"{self.msg.rstrip()} {self.hint}"
        return self.msg


def make_diff(
    before: t.Any, after: t.Any, before_header: str | None = None, after_header: str | None = None
) -> dict[str, t.Any]:
    """Return an Ansible diff dict (``before``/``after`` plus optional headers)."""
    diff: dict[str, t.Any] = {"before": before, "after": after}
    if before_header is not None:
        diff["before_header"] = before_header
    if after_header is not None:
        diff["after_header"] = after_header
    return diff


class EdgeMLModule:
    """A thin composition wrapper around ``AnsibleModule``."""

    def __init__(self, argument_spec: dict[str, t.Any], **kwargs: t.Any) -> None:
        kwargs.setdefault("supports_check_mode", True)
        self.module = AnsibleModule(argument_spec=argument_spec, **kwargs)

    # Plain delegation keeps call sites short: wrapper.params, wrapper.check_mode, ...
    @property
    def params(self) -> dict[str, t.Any]:
        return self.module.params

    @property
    def check_mode(self) -> bool:
        return bool(self.module.check_mode)

    @property
    def diff_mode(self) -> bool:
        return bool(getattr(self.module, "_diff", False))

    def warn(self, msg: str) -> None:
        self.module.warn(msg)

    def require_libs(self, libs: t.Iterable[tuple[str, str | None]]) -> None:
        """Fail unless every ``(pip name, import error or None)`` is importable."""
        for name, error in libs:
            if error is not None:
                self.module.fail_json(msg=missing_required_lib(name), exception=error)

    def diff(self, before: t.Any, after: t.Any, **headers: str) -> dict[str, t.Any] | None:
        """Build the diff only when the user runs with ``--diff``."""
        if not self.diff_mode:
            return None
        return make_diff(before, after, **headers)

    def fail(self, error: EdgeMLError, **result: t.Any) -> t.NoReturn:
        result.update(error.details)
        self.module.fail_json(msg=str(error), **result)
        raise AssertionError("unreachable")  # pragma: no cover - fail_json exits

    def exit(self, **result: t.Any) -> t.NoReturn:
        self.module.exit_json(**result)
        raise AssertionError("unreachable")  # pragma: no cover - exit_json exits

    def run(self, func: t.Callable[[EdgeMLModule], dict[str, t.Any]]) -> t.NoReturn:
        """Run ``func(self)``; exit with its result or fail with an ``EdgeMLError``."""
        try:
            result = func(self)
        except EdgeMLError as exc:
            self.fail(exc)
        self.exit(**result)
