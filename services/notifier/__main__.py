"""Run the notifier: ``python -m services.notifier``."""

from services.notifier.service import main

main()
