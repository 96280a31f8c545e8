"""pneumocnn.core.guard: which DICOM tags say an image is not a frontal chest X-ray of a person
(the rules alone, on tag values; through DICOM files and predict: test_dicom.py, test_cli.py)."""

from __future__ import annotations

import pytest

from pneumocnn.core.guard import PREFIX, SPECIES_CODE, reason

SCORED = [
    {},
    {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"},
    {"Modality": "CR", "BodyPartExamined": "chest", "ViewPosition": "AP"},
    {"Modality": "RG"},
    {"Modality": "DR"},  # the retired code of digital radiography
    {"Modality": " dx ", "BodyPartExamined": "PORT_CHEST", "ViewPosition": ""},
    {"BodyPartExamined": "CHEST PA", "PresentationIntentType": "FOR PRESENTATION"},
    {"ViewPosition": "AP SUPINE"},
    {"ViewPosition": "ERECT"},  # names no view: passes
    {"PatientSpeciesDescription": "Homo sapiens"},
    {"PatientSpeciesDescription": "HUMAN", SPECIES_CODE: "337915000"},
    {"Modality": "", "BodyPartExamined": "", "PatientSpeciesDescription": ""},  # empty: unknown
    {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Modality": "CR"},  # RSNA challenge files
    {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.3", "Modality": "DX", "BodyPartExamined": "CHEST"},
]

HELD = [
    ({"Modality": "OT"}, "Modality is OT"),
    ({"Modality": "CT", "BodyPartExamined": "CHEST"}, "Modality is CT"),
    ({"Modality": "MG"}, "Modality is MG"),
    ({"Modality": "DX", "PresentationIntentType": "FOR PROCESSING"}, "DX for processing"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1"}, "DX for processing"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "secondary capture that does not say"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.2", "Modality": "OT"}, "Modality is OT"),
    ({"BodyPartExamined": "HAND"}, "BodyPartExamined is HAND"),
    ({"BodyPartExamined": "THORAX"}, "BodyPartExamined is THORAX"),
    ({"BodyPartExamined": "CHESTABDOMEN"}, "BodyPartExamined is CHESTABDOMEN"),
    ({"ViewPosition": "LL"}, "lateral view (ViewPosition LL)"),
    ({"ViewPosition": "rl"}, "lateral view"),
    ({"ViewPosition": "LATERAL"}, "lateral view"),
    ({"ViewPosition": "LAT"}, "lateral view"),
    ({"ViewPosition": "RLD"}, "decubitus view"),
    ({"ViewPosition": "LLD"}, "decubitus view"),
    ({"ViewPosition": "RAO"}, "oblique view"),
    ({"ViewPosition": "LPO"}, "oblique view"),
    ({"PatientSpeciesDescription": "Canis lupus familiaris"}, "patient species is Canis"),
    ({SPECIES_CODE: "448771007"}, "species code 448771007"),  # domestic dog
    ({"Modality": "DX", "BodyPartExamined": "THORAX", "ViewPosition": "LL",
      "PatientSpeciesDescription": "Canine"}, "BodyPartExamined is THORAX"),  # the dog
]


@pytest.mark.parametrize("tags", SCORED, ids=str)
def test_tags_of_a_frontal_chest_or_none_pass(tags):
    assert reason(tags) is None


@pytest.mark.parametrize("tags, why", HELD, ids=[str(t) for t, _ in HELD])
def test_tags_that_say_otherwise_are_held_with_the_tag_named(tags, why):
    found = reason(tags)
    assert found is not None and found.startswith(PREFIX) and why in found, found
