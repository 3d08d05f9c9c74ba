"""`orchestrator up`: broker and part processes on one machine."""
