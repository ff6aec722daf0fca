"""Run the eligibility service: ``python -m services.eligibility``."""

from services.eligibility.service import main

main()
