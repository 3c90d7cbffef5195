"""What deploy_model.yml records for a host (its rollout_* facts), for the tests of what is
made from them: the summary row (tests/unit/plugins/filter/test_rollout.py) and the report
pages (tests/unit/test_report_pages.py)."""

from __future__ import annotations

# The canary stopped 2.0.0 at its smoke gate and serves 1.0.0 again.
ROLLED_BACK_CANARY = {
    "edgeml_model_name": "digits",
    "rollout_describe": {"ring": "canary", "site": "site_a"},
    "rollout_attempted_version": "2.0.0",
    "rollout_old_version": "1.0.0",
    "rollout_new_version": "1.0.0",
    "rollout_outcome": "rolled_back",
    "rollout_reason": "smoke gate: 0 of 8 vectors right",
    "rollout_seconds": 14.2,
    "rollout_gates": [
        {
            "name": "readiness",
            "passed": True,
            "detail": "model digits 2.0.0 ready",
            "measured": {"seconds_to_ready": 1.5},
            "threshold": {"timeout_seconds": 90},
            "seconds": 1.52,
        },
        {
            "name": "smoke",
            "passed": False,
            "detail": "0 of 8 vectors right",
            "measured": {"pass_ratio": 0.0},
            "threshold": {"min_pass_ratio": 1.0},
            "seconds": 0.08,
        },
    ],
}
