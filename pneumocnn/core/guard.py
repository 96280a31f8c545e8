"""The input guard: DICOM tags that say an image is not a frontal chest X-ray of a person.

The models were trained on frontal (PA or AP) chest radiographs of children. On anything else
their answer means nothing, yet it reads as a confident NORMAL or PNEUMONIA. A DICOM file says
what it holds, and when its tags say it is something else the image is not scored:
:func:`reason` gives why, and :class:`~pneumocnn.core.errors.NotFrontalChestError` carries it.

A tag that is absent or empty says nothing and passes; the guard only acts on what a file
states. The rules, each on the value upper-cased with runs of spaces, ``_``, ``-``, ``^`` and
``/`` read as one space:

- ``Modality`` must be CR, DX, RG (radiographic imaging: film, and some digital units) or DR
  (the retired code for digital radiography): OT (other; secondary captures, scanned papers,
  dose sheets), MG, CT, MR, US, XA, RF, ... are refused;
- a Secondary Capture (``SOPClassUID`` of Secondary Capture Image Storage or one of its
  multi-frame kinds: a container for any picture, screenshots and scanned papers among them)
  must say it is a radiograph: without a radiographic ``Modality`` it is refused;
- ``PresentationIntentType`` FOR PROCESSING, or the SOP class Digital X-Ray Image Storage - For
  Processing (raw detector data, not meant to be shown), is refused;
- ``BodyPartExamined`` must have CHEST among its words (CHEST, CHEST PA, PORT CHEST): THORAX
  is not DICOM's term for the chest and veterinary systems use it, so it is refused, as are
  CHESTABDOMEN and every other part;
- ``ViewPosition`` must not be lateral (LL, RL, LAT, LATERAL), decubitus (LLD, RLD) or oblique
  (LLO, RLO, LAO, RAO, LPO, RPO); AP, PA and values that name no view pass;
- the patient's species (``PatientSpeciesDescription``, or the code in
  ``PatientSpeciesCodeSequence``), where given, must be human.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PREFIX = "not a frontal chest X-ray: "
# the DICOM keywords read; and the first code value of PatientSpeciesCodeSequence, under:
TAGS = ("SOPClassUID", "Modality", "PresentationIntentType", "BodyPartExamined", "ViewPosition",
        "PatientSpeciesDescription")
SPECIES_CODE = "PatientSpeciesCode"

RADIOGRAPHY = frozenset({"CR", "DX", "RG", "DR"})
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = frozenset(f"1.2.840.10008.5.1.4.1.1.7{kind}" for kind in ("", ".1", ".2", ".3", ".4"))
VIEWS = {
    **dict.fromkeys(("LL", "RL", "LAT", "LATERAL"), "lateral"),
    **dict.fromkeys(("LLD", "RLD", "DECUBITUS"), "decubitus"),
    **dict.fromkeys(("LLO", "RLO", "LAO", "RAO", "LPO", "RPO", "OBLIQUE"), "oblique"),
}
HUMAN = frozenset({"HOMO SAPIENS", "HUMAN"})
HUMAN_CODES = frozenset({"337915000", "L-85B00"})  # SNOMED CT, and the older SNOMED RT code


def reason(tags: Mapping[str, str]) -> str | None:
    """Why ``tags`` (DICOM keyword to value, see :data:`TAGS`, and :data:`SPECIES_CODE` to the
    first code value of ``PatientSpeciesCodeSequence``) say the image is not a frontal chest
    X-ray of a person, beginning with :data:`PREFIX`; ``None`` when they do not say so."""
    modality = _words(tags, "Modality")
    if modality and " ".join(modality) not in RADIOGRAPHY:
        return f"{PREFIX}Modality is {tags['Modality'].strip()} (CR, DX or RG expected)"
    sop_class = tags.get("SOPClassUID", "").strip()
    if sop_class in SECONDARY_CAPTURE and not modality:
        return f"{PREFIX}a secondary capture that does not say it is a radiograph (no Modality)"
    if (_words(tags, "PresentationIntentType") == ["FOR", "PROCESSING"]
            or sop_class == DX_FOR_PROCESSING):
        return f"{PREFIX}DX for processing (raw detector data, not an image for display)"
    body_part = _words(tags, "BodyPartExamined")
    if body_part and "CHEST" not in body_part:
        return f"{PREFIX}BodyPartExamined is {tags['BodyPartExamined'].strip()} (CHEST expected)"
    views = [VIEWS[word] for word in _words(tags, "ViewPosition") if word in VIEWS]
    if views:
        return f"{PREFIX}{views[0]} view (ViewPosition {tags['ViewPosition'].strip()})"
    species = _words(tags, "PatientSpeciesDescription")
    if species and " ".join(species) not in HUMAN:
        return f"{PREFIX}patient species is {tags['PatientSpeciesDescription'].strip()}"
    code = tags.get(SPECIES_CODE, "").strip()
    if code and code not in HUMAN_CODES:
        return f"{PREFIX}patient species is not human (species code {code})"
    return None


def _words(tags: Mapping[str, str], key: str) -> list[str]:
    return re.sub(r"[\s_\-^/]+", " ", tags.get(key, "").upper()).split()
