"""Gateway unit and integration tests."""
