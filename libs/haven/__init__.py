"""Haven: shared contracts (generated) and the kit every service uses."""
