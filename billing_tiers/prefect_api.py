"""The Prefect API a command will report to, checked before any flow starts.

Prefect takes ``PREFECT_API_URL`` from the environment *or* from the active profile
(``prefect config set PREFECT_API_URL=...``, as the README's set-up does), so the check reads
Prefect's own settings, not ``os.environ``: with the URL only in the profile and the server down,
a flow would otherwise end in Prefect's ``RuntimeError: Failed to reach API`` after its retries.
"""

from __future__ import annotations

import os

from billing_tiers.errors import PipelineError

HEALTH_TIMEOUT_SECONDS = 5.0


def _where_set() -> tuple[str, str]:
    """Where PREFECT_API_URL comes from, and how to unset it there."""
    if os.environ.get("PREFECT_API_URL"):
        return "the environment", "unset PREFECT_API_URL"
    try:
        from prefect.context import get_settings_context

        profile = get_settings_context().profile
        if any(getattr(setting, "name", setting) == "PREFECT_API_URL" for setting in profile.settings):
            return f"Prefect profile {profile.name!r}", "run `prefect config unset PREFECT_API_URL`"
    except Exception:  # no settings context: say it generally
        pass
    return "the Prefect settings", "unset PREFECT_API_URL"


def require_prefect_api(timeout: float = HEALTH_TIMEOUT_SECONDS) -> str | None:
    """The Prefect API URL flows will report to, after checking that its server answers.

    None when no URL is set (environment or profile): the flow then starts Prefect's temporary
    local server. A server that does not answer is a one-line PipelineError naming the URL, where
    it was set and what to do.
    """
    from prefect.settings import get_current_settings

    # Prefect's settings (environment, else the active profile). The environment is read first as
    # well: the settings are fixed when Prefect is imported, and a variable set later in the same
    # process (a test) would be missed; in a fresh process both are the same.
    url = os.environ.get("PREFECT_API_URL") or get_current_settings().api.url
    if not url:
        return None
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as exc:
        source, unset = _where_set()
        raise PipelineError(
            f"the Prefect server at {url} does not answer ({type(exc).__name__}); PREFECT_API_URL is set in "
            f"{source}: start that server (`prefect server start`), or {unset} to use a temporary local server"
        ) from None
    return str(url)
