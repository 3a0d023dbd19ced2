"""EMR transfer: a patient's readings as an HL7 FHIR R4 Bundle (docs/fhir.md).

fhir.py builds the Bundle (pure), fhir_checks.py checks codes, units and references that a
structural parser accepts blindly, source.py reads one patient's readings from the journal
and registry files (read-only, no key). The command is `vitalbridge export fhir`
(edge_agent/commands/export.py).
"""

from edge_agent.export.fhir import (
    DeviceInfo,
    ExportConfig,
    ExportReading,
    ExportResult,
    ExportSummary,
    MessageInfo,
    build_bundle,
)
from edge_agent.export.fhir_checks import Problem, check_bundle, structural_problems
from edge_agent.export.source import PatientReadings, SourceError, read_patient_readings

__all__ = [
    "DeviceInfo",
    "ExportConfig",
    "ExportReading",
    "ExportResult",
    "ExportSummary",
    "MessageInfo",
    "PatientReadings",
    "Problem",
    "SourceError",
    "build_bundle",
    "check_bundle",
    "read_patient_readings",
    "structural_problems",
]
