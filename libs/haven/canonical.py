"""The canonical base URL of Haven's FHIR code systems, extensions and topics, shared by every service."""

from typing import Final

CANONICAL_BASE: Final = "https://haven.example.org/fhir"
CS_PROGRAMME: Final = f"{CANONICAL_BASE}/CodeSystem/programme"
CS_TASK_ROUTE: Final = f"{CANONICAL_BASE}/CodeSystem/task-route"
CS_TASK_STATUS_REASON: Final = f"{CANONICAL_BASE}/CodeSystem/task-status-reason"
EXT_MANUAL_REVIEW: Final = f"{CANONICAL_BASE}/StructureDefinition/task-manual-review"
EXT_RESPONSIBLE_LOCAL_AUTHORITY: Final = f"{CANONICAL_BASE}/StructureDefinition/responsible-local-authority"
TOPIC_REFERRAL_ROUTED: Final = f"{CANONICAL_BASE}/SubscriptionTopic/referral-routed"
ONS_GSS: Final = "http://statistics.data.gov.uk/id/statistical-geography"
EXT_SUBSCRIPTION_SECRET: Final = f"{CANONICAL_BASE}/StructureDefinition/subscription-signing-secret"
