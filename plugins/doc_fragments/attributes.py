# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Shared descriptions of the module attributes (check_mode, diff_mode, idempotent).

A module extends ``edgeml.fleet.attributes`` and states only ``support`` (and
``details`` when useful) for each attribute; the descriptions come from here.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run in C(check_mode) and return a truthful C(changed) status and the
        predicted result without modifying anything.
  diff_mode:
    description:
      - Returns the state before and after (or as it would be after, in C(check_mode))
        when run with C(--diff).
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second run reports
        C(changed=false) and modifies nothing.
"""
