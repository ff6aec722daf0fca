"""The referral router's pure domain: the service directory and the matching of referrals to services.

No I/O beyond reading the shipped directory file: the consumer around it reads events and KV state,
calls these functions, reserves places with compare-and-set and publishes the result.
"""

from services.referral_router.domain.assessment import (
    Answer,
    Assessment,
    Continuation,
    FailedRule,
    NrmStatus,
    Outcome,
    ProgrammeDecision,
    ReferrerKind,
    RoutingFacts,
    ServiceAsked,
    Urgency,
    assessment_from_proto,
)
from services.referral_router.domain.directory import (
    Directory,
    DirectoryError,
    HealthcareService,
    ServiceCategory,
    load_directory,
)
from services.referral_router.domain.directory_fhir import (
    directory_from_healthcare_services,
    healthcare_service_from_fhir,
    healthcare_service_to_fhir,
)
from services.referral_router.domain.matching import plan_routing
from services.referral_router.domain.plan import (
    Alternative,
    Fallback,
    PlannedTask,
    RoutingPlan,
    Unrouted,
    UnroutedCode,
)
from services.referral_router.domain.rerouting import (
    EligibilityChangePlan,
    ExistingTask,
    TaskClosure,
    TaskReview,
    plan_after_eligibility_change,
    plan_after_move,
    plan_reroute_after_rejection,
)
from services.referral_router.domain.to_proto import plan_to_proto, routed_event_id_for, task_id_for

__all__ = [
    "Alternative",
    "Answer",
    "Assessment",
    "Continuation",
    "Directory",
    "DirectoryError",
    "EligibilityChangePlan",
    "ExistingTask",
    "FailedRule",
    "Fallback",
    "HealthcareService",
    "NrmStatus",
    "Outcome",
    "PlannedTask",
    "ProgrammeDecision",
    "ReferrerKind",
    "RoutingFacts",
    "RoutingPlan",
    "ServiceAsked",
    "ServiceCategory",
    "TaskClosure",
    "TaskReview",
    "Unrouted",
    "UnroutedCode",
    "Urgency",
    "assessment_from_proto",
    "directory_from_healthcare_services",
    "healthcare_service_from_fhir",
    "healthcare_service_to_fhir",
    "load_directory",
    "plan_after_eligibility_change",
    "plan_after_move",
    "plan_reroute_after_rejection",
    "plan_routing",
    "plan_to_proto",
    "routed_event_id_for",
    "task_id_for",
]
