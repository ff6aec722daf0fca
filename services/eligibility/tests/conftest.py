"""Shared fixtures: the shipped rulebook, loaded once."""

import pytest

from services.eligibility.domain import Rulebook, load_rulebook


@pytest.fixture(scope="session")
def rulebook() -> Rulebook:
    return load_rulebook()
