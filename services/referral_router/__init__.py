"""The referral_router service."""
