"""The small kit every Haven service uses: settings, NATS wiring, telemetry, lifecycle, health."""
