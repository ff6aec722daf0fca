"""Run the gateway: ``python -m services.gateway``."""

from services.gateway.service import main

main()
