"""Haven services: each a thin process over the shared kit."""
