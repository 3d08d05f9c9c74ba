"""The robot's local web control panel (issue 14): static files served by ``orchestrator up``."""
