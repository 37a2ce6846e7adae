"""Tests of the `supervision` package."""
