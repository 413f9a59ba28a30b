"""Joining a Ray cluster (or starting a private instance on this machine), with Ray 2.60's token rules."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from harness.errors import HarnessError


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS), or start a private local instance; True for a private
    instance. ``ray.shutdown()`` afterwards stops a private instance and only disconnects from a cluster."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _use_auth_token(address)  # before Ray reads its configuration
    import ray

    options = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    try:
        if address:
            ray.init(address=address, **options)
        else:  # loopback only: a private instance needs no network, and exposes nothing on one
            ray.init(address="local", _node_ip_address="127.0.0.1", **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise HarnessError(
            f"Could not connect to {where} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). "
            + ("Start one with `ray start --head` on the head node (and `ray start --address HEAD:6379` on the "
               "others), then pass --address auto on a cluster node or --address HEAD:6379; or leave --address out "
               "to run on this machine alone. If the cluster uses token authentication (Ray's default since 2.60), "
               "this machine needs its token: copy the head node's ~/.ray/auth_token here or set RAY_AUTH_TOKEN."
               if address else "Check `ray status` and the logs under /tmp/ray.")
        ) from exc
    return not address


def _use_auth_token(address: str) -> None:
    """Ray 2.60 sends its token to a cluster found with ``auto`` but not to one named by
    HOST:PORT, which then refuses the connection (InvalidAuthToken). Where a token is at hand,
    send it either way (a cluster without authentication ignores it); RAY_AUTH_MODE, if set, rules."""
    if address == "auto" or "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray" in sys.modules:  # Ray caches its configuration on import: have it read the variable again
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
