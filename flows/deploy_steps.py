"""Prefect deployment steps of ``prefect.yaml`` (run by ``prefect deploy``, not by the flows).

``require_deploy_environment`` is the build step: ``prefect --no-prompt deploy --all`` runs it
before it registers anything, and it stops the deploy in one line when ``BILLING_TIERS_HOME`` is
unset, blank or relative. Prefect itself only warns about an unset variable and deploys the
template: the pull step ``set_working_directory`` then gets an empty directory on the worker, the
flow run stays in the worker's temporary folder, and every run of the deployment (the next
scheduled one included) crashes with a ``FileNotFoundError`` for ``flows/scheduled.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

HOME_VARIABLE = "BILLING_TIERS_HOME"


def home_problem(environ: Mapping[str, str]) -> str | None:
    """What is wrong with ``BILLING_TIERS_HOME`` in ``environ``, in one line; None if nothing."""
    value = environ.get(HOME_VARIABLE, "").strip()
    what = "prefect.yaml needs this repository's folder on the worker's machine, where flow runs start"
    again = f"nothing was deployed: deploy again with {HOME_VARIABLE}=/path/to/billing-tiers"
    if not value:
        return f"{HOME_VARIABLE} is not set: {what}; {again}"
    if not os.path.isabs(value):
        return f"{HOME_VARIABLE}={value!r} is not an absolute path: {what}; {again}"
    return None


def require_deploy_environment() -> dict[str, str]:
    """Build step: stop ``prefect deploy`` with one line on stderr (exit 2) when
    ``BILLING_TIERS_HOME`` is unset, blank or relative. Prefect turns an exception in a step into a
    traceback; an exit is what ends the deploy with only the line."""
    problem = home_problem(os.environ)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    return {}
