"""The public surface is what `__all__` names, and nothing else starts without an underscore."""

from __future__ import annotations

import orchestratord_client


def test_all_names_exactly_the_public_members() -> None:
    exported = set(orchestratord_client.__all__)
    members = {
        name
        for name in dir(orchestratord_client)
        if not name.startswith("_") and name not in {"errors", "events", "resources"}  # the modules
    }
    assert members | {"__version__"} == exported
    assert all(hasattr(orchestratord_client, name) for name in exported)
