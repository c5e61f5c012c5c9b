"""Shared fixtures: small simulated cohorts are made once per test session."""

from __future__ import annotations
