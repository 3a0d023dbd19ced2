"""Checks of an exported FHIR Bundle that a structural parser does not make.

`fhir.resources` (pydantic models of the FHIR R4B structures) checks shapes and primitive
formats, but accepts any code: a wrong LOINC code, a UCUM unit that does not fit it, a
category from nowhere, a missing effective time or a reference to nothing all parse. An EMR
would file such an Observation under the wrong test or the wrong unit, so `check_bundle`
re-checks every exported resource against our own vocabulary table (fhir.VOCABULARY) and the
vital-signs profile rules, and returns the problems (an empty list when clean).
`structural_problems` runs the structural parse and returns its errors in the same form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge_agent.export import fhir

OBSERVATION_STATUSES = ("registered", "preliminary", "final", "amended", "corrected",
                        "cancelled", "entered-in-error", "unknown")
ABSENT_REASONS = ("unknown", "asked-unknown", "temp-unknown", "not-asked", "asked-declined",
                  "masked", "not-applicable", "unsupported", "as-text", "error", "not-a-number",
                  "negative-infinity", "positive-infinity", "not-performed", "not-permitted")
# Personal data a pseudonymous export must never carry on the Patient.
PATIENT_FORBIDDEN = ("name", "telecom", "address", "birthDate", "photo", "contact")
# Who the gateway is in each kind of provenance, and who else must be named.
PROVENANCE_ROLES = {"sealed": ("verifier", "performer"), "attested": ("attester", "performer"),
                    "manual": ("assembler", "enterer")}
# A vital sign needs the day (profile invariant vs-1) and, for monitoring, the time and zone.
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")


@dataclass(frozen=True, slots=True)
class Problem:
    where: str  # "entry[3] Observation", "bundle"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _panel_codes() -> tuple[dict[str, fhir.VitalCode], set[str]]:
    components = {fhir.VOCABULARY[(q, "mm[Hg]")].loinc[0].code: fhir.VOCABULARY[(q, "mm[Hg]")]
                  for q in fhir.BP_COMPONENTS}
    return components, {c.code for v in fhir.VOCABULARY.values() for c in v.loinc}


BP_COMPONENT_CODES, KNOWN_LOINC = _panel_codes()


# ------------------------------------------------------------------ helpers


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, Mapping):
        return []
    codings = concept.get("coding")
    return [c for c in codings if isinstance(c, Mapping)] if isinstance(codings, list) else []


def _codes(concept: Any, system: str) -> set[str]:
    return {str(c.get("code")) for c in _codings(concept) if c.get("system") == system}


def _references(node: Any) -> Iterator[str]:
    """Every Reference.reference string anywhere inside a resource."""
    if isinstance(node, Mapping):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield ref
        for key, value in node.items():
            if key != "reference":
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _valid_datetime(text: Any) -> bool:
    if not isinstance(text, str) or not _DATETIME.match(text):
        return False
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class _Checker:
    def __init__(self, bundle: Mapping[str, Any]) -> None:
        self.bundle = bundle
        self.problems: list[Problem] = []
        self.types: dict[str, str] = {}  # fullUrl -> resourceType
        self.provenance_targets: set[str] = set()

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def run(self) -> list[Problem]:
        bundle = self.bundle
        if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
            self.add("bundle", "not a Bundle")
            return self.problems
        kind = bundle.get("type")
        if kind not in fhir.BUNDLE_TYPES:
            self.add("bundle", f"type {kind!r} is not one of {', '.join(fhir.BUNDLE_TYPES)}")
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            self.add("bundle", "entry is not a list")
            return self.problems
        resources: list[tuple[str, str, Mapping[str, Any]]] = []
        for i, entry in enumerate(entries):
            where = f"entry[{i}]"
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if not isinstance(resource, Mapping) or not resource.get("resourceType"):
                self.add(where, "has no resource")
                continue
            rtype = str(resource["resourceType"])
            where = f"{where} {rtype}"
            url = entry.get("fullUrl")
            if not isinstance(url, str) or not url:
                self.add(where, "has no fullUrl")
            elif url in self.types:
                self.add(where, f"fullUrl {url} is used twice")
            else:
                self.types[url] = rtype
            if kind == "transaction":
                self._request(where, entry.get("request"), rtype)
            resources.append((where, str(url), resource))
        for where, _, resource in resources:
            for ref in _references(resource):
                if ref not in self.types:
                    self.add(where, f"reference {ref} does not resolve inside the bundle")
        for where, _, resource in resources:
            check = getattr(self, "_" + resource["resourceType"].lower(), None)
            if check is not None:
                check(where, resource)
        for where, url, resource in resources:
            if resource["resourceType"] == "Observation" and url not in self.provenance_targets:
                self.add(where, "no Provenance names this observation as a target")
        return self.problems

    def _request(self, where: str, request: Any, rtype: str) -> None:
        if not isinstance(request, Mapping):
            self.add(where, "a transaction entry needs a request")
        elif request.get("method") != "POST" or request.get("url") != rtype:
            self.add(where, f"request must be POST {rtype}, got {request.get('method')} "
                     f"{request.get('url')}")

    def _target(self, where: str, reference: Any, rtype: str, field: str) -> None:
        ref = reference.get("reference") if isinstance(reference, Mapping) else None
        if ref is None:
            self.add(where, f"{field} must reference a {rtype} in the bundle")
        elif self.types.get(ref, rtype) != rtype:
            self.add(where, f"{field} references a {self.types[ref]}, not a {rtype}")

    # -- resources -------------------------------------------------------------------------

    def _patient(self, where: str, patient: Mapping[str, Any]) -> None:
        for name in PATIENT_FORBIDDEN:
            if name in patient:
                self.add(where, f"carries {name}: the export is pseudonymous")
        identifiers = patient.get("identifier")
        if not isinstance(identifiers, list) or not any(
                isinstance(i, Mapping) and i.get("system") and i.get("value") for i in identifiers):
            self.add(where, "needs an identifier with system and value (the pseudonym)")

    def _device(self, where: str, device: Mapping[str, Any]) -> None:
        identifiers = device.get("identifier")
        if not isinstance(identifiers, list) or not identifiers:
            self.add(where, "needs an identifier")

    def _provenance(self, where: str, provenance: Mapping[str, Any]) -> None:
        targets = [t.get("reference") for t in provenance.get("target") or []
                   if isinstance(t, Mapping)]
        if not targets:
            self.add(where, "has no target")
        self.provenance_targets.update(t for t in targets if isinstance(t, str))
        if not _valid_datetime(provenance.get("recorded")):
            self.add(where, "recorded is missing or not an instant")
        verdicts = [t.get("code") for t in (provenance.get("meta") or {}).get("tag", [])
                    if isinstance(t, Mapping) and str(t.get("system", "")).endswith(
                        "/CodeSystem/provenance-verdict")]
        if len(verdicts) != 1 or verdicts[0] not in PROVENANCE_ROLES:
            self.add(where, f"needs exactly one verdict tag ({', '.join(fhir.VERDICTS)})")
            return
        roles = set()
        for agent in provenance.get("agent") or []:
            if not isinstance(agent, Mapping) or not agent.get("who"):
                self.add(where, "an agent has no who")
                continue
            roles |= _codes(agent.get("type"), fhir.PARTICIPANT_TYPE)
        gateway_role, other = PROVENANCE_ROLES[verdicts[0]]
        if gateway_role not in roles:
            self.add(where, f"a {verdicts[0]} reading needs the gateway as {gateway_role}")
        if other not in roles:
            self.add(where, f"a {verdicts[0]} reading needs an agent of type {other}")

    def _observation(self, where: str, obs: Mapping[str, Any]) -> None:
        if obs.get("status") not in OBSERVATION_STATUSES:
            self.add(where, f"status {obs.get('status')!r} is not an Observation status")
        self._target(where, obs.get("subject"), "Patient", "subject")
        if "device" in obs:
            self._target(where, obs.get("device"), "Device", "device")
        effective = obs.get("effectiveDateTime")
        if effective is None and isinstance(obs.get("effectivePeriod"), Mapping):
            effective = obs["effectivePeriod"].get("start")
        if effective is None:
            self.add(where, "has no effective time")
        elif not _valid_datetime(effective):
            self.add(where, f"effective time {effective!r} is not a date-time with a zone")
        for coding in _codings(obs.get("code")):
            if not coding.get("system") or not coding.get("code"):
                self.add(where, "every code needs a system and a code (vital-signs profile)")
        loinc = _codes(obs.get("code"), fhir.LOINC)
        if fhir.BP_PANEL.code in loinc:
            self._panel(where, obs, loinc)
            return
        vital = self._vocabulary(where, obs, loinc)
        if vital is None:
            return
        self._category_and_profiles(where, obs, vital.category, vital.profiles)
        self._value(where, obs, [vital.ucum], required=True)
        if "component" in obs:
            self.add(where, "components are only exported on the bp panel")

    def _vocabulary(self, where: str, obs: Mapping[str, Any],
                    loinc: set[str]) -> fhir.VitalCode | None:
        """The vocabulary entry the observation's codes name, or None (a problem is added)."""
        if not loinc:
            self.add(where, "has no LOINC code")
            return None
        unknown = sorted(loinc - KNOWN_LOINC)
        if unknown:
            self.add(where, f"LOINC {', '.join(unknown)} is not in the export vocabulary")
            return None
        mdc = _codes(obs.get("code"), fhir.MDC)
        matches = []
        for vital in fhir.VOCABULARY.values():
            codes = {c.code for c in vital.loinc}
            if vital.loinc[0].code in loinc and loinc <= codes and (
                    not mdc or (vital.mdc is not None and mdc == {vital.mdc.code})):
                matches.append(vital)
        if not matches:
            self.add(where, f"codes LOINC {sorted(loinc)} / MDC {sorted(mdc)} name no single "
                     "quantity of the vocabulary")
            return None
        if all(m.component_only for m in matches):
            self.add(where, f"LOINC {sorted(loinc)} is exported only as a component of the bp "
                     f"panel {fhir.BP_PANEL.code}")
            return None
        units = {m.ucum for m in matches}
        if len(units) > 1:  # the codes fit several units (not the case in the table today)
            self._value(where, obs, sorted(units), required=True)
            return None
        return matches[0]

    def _category_and_profiles(self, where: str, obs: Mapping[str, Any], category: str,
                               profiles: tuple[str, ...]) -> None:
        categories = set()
        for concept in obs.get("category") or []:
            categories |= _codes(concept, fhir.OBSERVATION_CATEGORY)
        if category not in categories:
            self.add(where, f"needs category {category} ({fhir.OBSERVATION_CATEGORY})")
        if category != fhir.VITAL_SIGNS and fhir.VITAL_SIGNS in categories:
            self.add(where, "is not a vital sign but carries the vital-signs category")
        claimed = set((obs.get("meta") or {}).get("profile") or [])
        for profile in profiles:
            if profile not in claimed:
                self.add(where, f"does not claim profile {profile}")
        for profile in claimed - set(profiles):
            if profile.startswith(fhir.PROFILE_BASE):
                self.add(where, f"claims profile {profile}, which its code does not fit")

    def _value(self, where: str, node: Mapping[str, Any], ucum: list[str],
               required: bool) -> None:
        quantity, absent = node.get("valueQuantity"), node.get("dataAbsentReason")
        others = [k for k in node if k.startswith("value") and k != "valueQuantity"]
        if others:
            self.add(where, f"{others[0]} is not a Quantity")
        if quantity is not None and absent is not None:
            self.add(where, "has both a value and a dataAbsentReason")
        if absent is not None:
            codes = _codes(absent, fhir.DATA_ABSENT_REASON)
            if len(codes) != 1 or not codes <= set(ABSENT_REASONS):
                self.add(where, "dataAbsentReason needs one data-absent-reason code")
            return
        if quantity is None:
            if required:
                self.add(where, "has neither a value nor a dataAbsentReason")
            return
        if not isinstance(quantity, Mapping):
            self.add(where, "valueQuantity is not a Quantity")
            return
        if not _is_number(quantity.get("value")):
            self.add(where, f"value {quantity.get('value')!r} is not a finite number")
        if quantity.get("system") != fhir.UCUM:
            self.add(where, f"unit system must be UCUM ({fhir.UCUM})")
        if quantity.get("code") not in ucum:
            self.add(where, f"UCUM unit {quantity.get('code')!r} is not the one for its code "
                     f"({' or '.join(ucum)})")
        if not quantity.get("unit"):
            self.add(where, "valueQuantity has no human-readable unit")

    def _panel(self, where: str, obs: Mapping[str, Any], loinc: set[str]) -> None:
        if loinc != {fhir.BP_PANEL.code}:
            self.add(where, f"the bp panel must carry LOINC {fhir.BP_PANEL.code} only")
        mdc = _codes(obs.get("code"), fhir.MDC)
        if mdc and mdc != {fhir.BP_PANEL_MDC.code}:
            self.add(where, f"MDC {sorted(mdc)} does not fit the bp panel")
        self._category_and_profiles(where, obs, fhir.VITAL_SIGNS,
                                    (fhir.VITAL_SIGNS_PROFILE, fhir.BP_PROFILE))
        if "valueQuantity" in obs or "dataAbsentReason" in obs:
            self.add(where, "the bp panel's values belong in its components")
        seen: dict[str, int] = {}
        for i, component in enumerate(obs.get("component") or []):
            at = f"{where} component[{i}]"
            codes = _codes(component.get("code") if isinstance(component, Mapping) else None,
                           fhir.LOINC)
            if len(codes) != 1 or not codes <= set(BP_COMPONENT_CODES):
                self.add(at, f"LOINC {sorted(codes)} is not a bp component "
                         f"({', '.join(BP_COMPONENT_CODES)})")
                continue
            vital = BP_COMPONENT_CODES[codes.pop()]
            seen[vital.loinc[0].code] = seen.get(vital.loinc[0].code, 0) + 1
            mdc = _codes(component.get("code"), fhir.MDC)
            if mdc and (vital.mdc is None or mdc != {vital.mdc.code}):
                self.add(at, f"MDC {sorted(mdc)} does not fit LOINC {vital.loinc[0].code}")
            self._value(at, component, [vital.ucum], required=True)
        for quantity in fhir.BP_COMPONENTS:
            code = fhir.VOCABULARY[(quantity, "mm[Hg]")].loinc[0].code
            count = seen.get(code, 0)
            if quantity in fhir.BP_REQUIRED and count != 1:
                self.add(where, f"needs exactly one component {code} (found {count})")
            elif count > 1:
                self.add(where, f"has {count} components {code}")


def check_bundle(bundle: Mapping[str, Any]) -> list[Problem]:
    """Our code, unit, category, time, value and reference checks of an exported Bundle."""
    return _Checker(bundle).run()


def structural_problems(bundle: Mapping[str, Any]) -> list[Problem]:
    """Parse the bundle with fhir.resources' R4B models (R4B keeps R4's Observation, Device,
    Patient, Provenance and Bundle unchanged; fhir.resources 8 has no R4 package): the
    problems it reports, or an empty list."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        Bundle.model_validate(bundle)
    except ValidationError as err:
        return [Problem(".".join(str(p) for p in e["loc"]) or "bundle", e["msg"])
                for e in err.errors()]
    return []
