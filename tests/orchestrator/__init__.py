"""Tests of the orchestrator (a package, so that its conftest does not clash with tests/sdk's)."""
