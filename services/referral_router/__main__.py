"""Run the referral router: ``python -m services.referral_router``."""

from services.referral_router.service import main

main()
