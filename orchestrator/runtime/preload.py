"""What the fork server of `orchestrator up` imports once, so that every part it forks starts warm.

The framework's part runtime, its message models (built once: pydantic models cost most of a cold
start), and every installed plugin (the registry loads their entry points).  Then the objects made so
far are frozen out of the garbage collector's reach, so that a forked part does not write to (and so
copy) the pages it shares with its siblings when the collector runs.
"""

from __future__ import annotations

import gc

import orchestrator.client
import orchestrator.runtime.main
import orchestrator.runtime.primary  # noqa: F401
from orchestrator.resources.registry import default_registry

default_registry()  # every plugin's models, imported and registered
gc.collect()
gc.freeze()
