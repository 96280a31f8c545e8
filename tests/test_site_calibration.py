"""pneumocnn.clinic.site_calibration: site calibration, labelled and unlabelled, on "sites" made of the real
X-rays in tests/data, altered as acquisition at another site alters them and mixed at another
pneumonia share than the training data's (0.742), written as real files; and the command line.

The shipped X-rays come from the data set the bundled model was trained on, so the model ranks
them well; what a site changes here is framing, sharpness, exposure and the share of pneumonia.
Claims about how a shift moves a model's figures are made on the shipped tiny model, which does
not change when the bundled model does."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from helpers import TEST_DATA, TINY_INT8, real_images
from PIL import Image, ImageFilter

import pneumocnn
from pneumocnn.cli import main
from pneumocnn.clinic.site_calibration import (
    calibration_prior,
    calibration_report,
    fit_unlabelled,
    required_images,
)
from pneumocnn.clinic.site_record import KEY, SiteRecord, ThresholdRule
from pneumocnn.core.errors import DatasetError, ModelFileError
from pneumocnn.core.modelfile import ModelDescription, embed_in_tflite
from pneumocnn.runtime.model import bundled_models

HOME_SHARE = 388 / (135 + 388)  # the bundled model's validation split, where it was calibrated


def gamma(image: Image.Image, exponent: float) -> Image.Image:
    return image.point([round(255 * (v / 255) ** exponent) for v in range(256)])


def softer(image: Image.Image) -> Image.Image:
    """Softer (Gaussian blur, radius 1.5) and darker (gamma 1.5)."""
    return gamma(image.filter(ImageFilter.GaussianBlur(1.5)), 1.5)


def tighter(image: Image.Image) -> Image.Image:
    """Framed tighter (4.5 % cut off each side: zoomed in 1.1x) and darker (gamma 1.5); the tiny
    model misses more pneumonias on such images."""
    w, h = image.size
    return gamma(image.crop((w // 22, h // 22, w - w // 22, h - h // 22)), 1.5)


def flatter(image: Image.Image) -> Image.Image:
    """Darker (gamma 1.6) with contrast x0.7 around the mean."""
    pixels = np.asarray(gamma(image, 1.6), dtype=np.float32)
    return Image.fromarray(np.clip(pixels.mean() + 0.7 * (pixels - pixels.mean()), 0, 255)
                           .astype(np.uint8))


def make_site(root: Path, counts: dict[str, int], alter, labelled: bool = True) -> Path:
    """Write ``counts[label]`` shipped X-rays of each class, altered by ``alter``, as PNG files:
    into ``root/<label>/`` or, unlabelled, all into ``root/day-1/``."""
    for label, count in counts.items():
        folder = root / (label if labelled else "day-1")
        folder.mkdir(parents=True, exist_ok=True)
        for path in real_images(label, count):
            alter(Image.open(path).convert("L")).save(folder / f"{label[0]}-{path.stem}.png")
    return root


@pytest.fixture(scope="module")
def shifted_site(tmp_path_factory) -> Path:
    """24 pneumonias and 20 normals (share 0.545), softer and darker, plus one file that is not
    an image."""
    root = make_site(tmp_path_factory.mktemp("site") / "xrays",
                     {"NORMAL": 20, "PNEUMONIA": 24}, softer)
    (root / "NORMAL" / "scanner-error.jpeg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def calibrated(shifted_site, tmp_path_factory):
    """The bundled models calibrated on the shifted site for sensitivity 0.9."""
    out = tmp_path_factory.mktemp("site-model") / "ours"
    return pneumocnn.calibrate(None, shifted_site, out, target_sensitivity=0.9), out


# ---------------------------------------------------------------------------------------------
# labelled


def test_calibration_recovers_the_target_sensitivity_at_a_shifted_site(tmp_path):
    """A site framed tighter, darker, at another pneumonia share: before, the tiny model misses
    1 pneumonia in 6 there; calibrated for sensitivity 0.95, it reaches the target on the site's
    images, and the cross-validated estimate (each image judged by a threshold chosen without
    it) is near it too."""
    site = make_site(tmp_path / "site", {"NORMAL": 20, "PNEUMONIA": 24}, tighter)
    out = tmp_path / "site.tflite"
    before = pneumocnn.evaluate(TINY_INT8, site).metrics
    result = pneumocnn.calibrate(TINY_INT8, site, out, target_sensitivity=0.95)
    after = pneumocnn.evaluate(out, site).metrics
    assert before["sensitivity"] < 0.9
    assert after["sensitivity"] >= 0.95 and after["specificity"] >= 0.8
    assert after["roc_auc"] == pytest.approx(before["roc_auc"])  # calibration keeps the order
    assert after["ece"] < before["ece"]
    cross_validated = result.record["cross_validated"]
    assert cross_validated["folds"] == 5
    assert cross_validated["sensitivity"] >= 0.9
    for name in ("sensitivity", "specificity"):
        low, high = cross_validated[f"{name}_ci"]
        assert low <= cross_validated[name] <= high and high - low > 0.05
    assert result.record["in_sample"]["sensitivity"] == pytest.approx(after["sensitivity"])
    assert result.record["in_sample"]["specificity"] == pytest.approx(after["specificity"])


def test_each_variant_reaches_the_target_on_its_own_outputs(shifted_site, calibrated):
    """The bundled models calibrated on the softer, darker site: each variant calls at least
    90 % of the site's pneumonias at its new threshold, as evaluate measures it."""
    result, out = calibrated
    for variant in ("int8", "float16"):
        metrics = pneumocnn.evaluate(pneumocnn.load(out, variant=variant), shifted_site).metrics
        assert metrics["sensitivity"] >= 0.9
        assert metrics["n"] == 44 and len(metrics["unreadable"]) == 1
        assert metrics["sensitivity"] == pytest.approx(
            result.records[variant]["in_sample"]["sensitivity"])


def test_the_site_model_records_its_calibration_and_its_origin(calibrated):
    result, out = calibrated
    assert sorted(p.name for p in out.iterdir()) == ["pneumonia-dynamic-int8.tflite",
                                                     "pneumonia-float16.tflite",
                                                     "pneumonia-int8.tflite"]
    model = pneumocnn.load(out)  # the folder still loads, choosing a variant
    record = model.description.info["site_calibration"]
    assert record["mode"] == "labelled" and record["target_sensitivity"] == 0.9
    assert record["images"] == {"NORMAL": 20, "PNEUMONIA": 24} and record["unreadable"] == 1
    assert record["prior"] == pytest.approx(24 / 44)
    assert datetime.fromisoformat(record["date"]).utcoffset().total_seconds() == 0
    original_path = bundled_models() / Path(model.path).name
    original = pneumocnn.load(original_path).description
    source = record["source"]
    assert source["file"] == original_path.name
    assert source["sha256"] == hashlib.sha256(original_path.read_bytes()).hexdigest()
    assert source["digest"] == original.sha256 != model.description.sha256
    assert (source["temperature"], source["bias"], source["threshold"]) == (
        original.temperature, original.bias, original.threshold)
    assert model.description.info["threshold_source"] == "site sensitivity >= 0.9"
    assert model.threshold != original.threshold
    # each variant calibrated on its own outputs, in one calibration: one id
    int8, float16 = (pneumocnn.load(out, variant=v).description for v in ("int8", "float16"))
    records = [d.info["site_calibration"] for d in (int8, float16)]
    assert [r["variant"] for r in records] == ["int8", "float16"]
    assert records[0]["id"] == records[1]["id"] and records[0]["date"] == records[1]["date"]
    assert int8.threshold != float16.threshold
    assert all(r["in_sample"]["sensitivity"] >= 0.9 for r in records)
    dynamic = pneumocnn.load(out, variant="dynamic-int8").description
    assert result.descriptions == {"float16": float16, "int8": int8, "dynamic-int8": dynamic}
    assert list(result.records) == ["float16", "dynamic-int8", "int8"]  # most precise first


def test_the_report_and_info_say_what_was_done(calibrated):
    result, out = calibrated
    report = str(result)
    assert "cross-validated sensitivity" in report and "optimistic" in report
    assert len(result.unreadable) == 1 and "scanner-error.jpeg" in result.unreadable[0]
    assert f"skipped {result.unreadable[0]}" in report
    assert len(result.written) == 3 and all(str(p) in report for p in result.written.values())
    lines = calibration_report(result.descriptions["int8"])
    assert len(lines) == 2 and lines[0].startswith("site calibration: labelled, 20 NORMAL, 24 "
                                                   "PNEUMONIA")


def test_a_single_file_gives_a_single_file(tmp_path):
    site = make_site(tmp_path / "site", {"NORMAL": 20, "PNEUMONIA": 24}, flatter)
    out = tmp_path / "site.tflite"
    result = pneumocnn.calibrate(TINY_INT8, site, out, target_sensitivity=0.9)
    assert result.written == {"int8": out}
    record = pneumocnn.load(out).description.info["site_calibration"]
    assert record["variant"] == "int8" and list(result.records) == ["int8"]
    assert record["source"]["sha256"] == hashlib.sha256(TINY_INT8.read_bytes()).hexdigest()
    metrics = pneumocnn.evaluate(out, site).metrics
    assert metrics["sensitivity"] >= 0.9 and metrics["threshold"] == pneumocnn.load(out).threshold


@pytest.mark.parametrize("target, normal, pneumonia, needed", [
    (0.97, 20, 24, "at least 34 needed"),  # 24 pneumonias cannot show a miss rate of 3 %
    (0.9, 15, 24, "at least 20 needed"),  # too few normals to fit on
])
def test_too_few_images_are_refused_saying_how_many_are_needed(tmp_path, target, normal,
                                                              pneumonia, needed):
    site = make_site(tmp_path / "site", {"NORMAL": normal, "PNEUMONIA": pneumonia}, flatter)
    with pytest.raises(DatasetError, match=needed) as refused:
        pneumocnn.calibrate(TINY_INT8, site, tmp_path / "out.tflite", target_sensitivity=target)
    assert f"{pneumonia} PNEUMONIA" in str(refused.value) and f"{normal} NORMAL" in str(refused.value)
    assert not (tmp_path / "out.tflite").exists()


def test_required_images():
    assert required_images(0.97) == (20, 34)
    assert required_images(0.9) == (20, 20)  # 1 / (1 - 0.9) is 10.000000000000002: still 10
    assert required_images(0.99) == (20, 100)
    for target in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="target sensitivity"):
            required_images(target)


def test_the_original_is_never_overwritten_nor_mixed_with_other_models(tmp_path):
    site = make_site(tmp_path / "site", {"NORMAL": 20, "PNEUMONIA": 20}, flatter)
    copy = tmp_path / "model.tflite"
    copy.write_bytes(TINY_INT8.read_bytes())
    with pytest.raises(ValueError, match="is the model being calibrated"):
        pneumocnn.calibrate(copy, site, copy, target_sensitivity=0.9)
    assert copy.read_bytes() == TINY_INT8.read_bytes()
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "other.tflite").write_bytes(TINY_INT8.read_bytes())
    with pytest.raises(ValueError, match="other model files"):
        pneumocnn.calibrate(None, site, crowded, target_sensitivity=0.9)
    with pytest.raises(ValueError, match="is a folder"):
        pneumocnn.calibrate(copy, site, crowded, target_sensitivity=0.9)


def test_variants_of_two_site_calibrations_do_not_load_as_one_model(calibrated, shifted_site,
                                                                   tmp_path):
    """Each variant has its own calibration; the shared id tells variants of one calibration
    from a mix of two."""
    _, out = calibrated
    again = tmp_path / "again"
    pneumocnn.calibrate(None, shifted_site, again, target_sensitivity=0.9)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "pneumonia-int8.tflite").write_bytes((out / "pneumonia-int8.tflite").read_bytes())
    (mixed / "pneumonia-float16.tflite").write_bytes(
        (again / "pneumonia-float16.tflite").read_bytes())
    with pytest.raises(ModelFileError, match="different models"):
        pneumocnn.load(mixed)
    assert pneumocnn.load(again).description.info["site_calibration"]["id"] != (
        pneumocnn.load(out).description.info["site_calibration"]["id"])


# ---------------------------------------------------------------------------------------------
# unlabelled


def test_unlabelled_mode_moves_the_estimated_share_toward_the_truth(tmp_path):
    """24 normals and 6 pneumonias (share 0.2), darker and flatter, in one unlabelled folder:
    EM on the model's outputs moves the share from the 0.742 its calibration assumed to near
    0.2; the probabilities follow it, and the same images are still called pneumonia."""
    site = make_site(tmp_path / "site", {"NORMAL": 24, "PNEUMONIA": 6}, flatter, labelled=False)
    result = pneumocnn.calibrate(None, site, tmp_path / "out", unlabelled=True)
    record = result.record
    assert record["mode"] == "unlabelled" and record["images"] == 30
    assert record["prior_before"] == pytest.approx(HOME_SHARE)
    assert "validation_counts" in record["prior_before_source"]
    assert record["prior"] < 0.35  # from 0.742; truth 0.2
    assert abs(record["prior"] - 0.2) < 0.25 * abs(HOME_SHARE - 0.2)
    assert record["converged"] and record["bias_shift"] < -1
    original, site_model = pneumocnn.load(variant="int8"), pneumocnn.load(tmp_path / "out",
                                                                          variant="int8")
    before, after = original.predict(site), site_model.predict(site)
    assert [p.label for p in before] == [p.label for p in after]
    assert all(a.probability <= b.probability for a, b in zip(after, before, strict=True))
    # 0.049 lower with the int8 file of issue 28 (0.24 against 0.28): most images sit near 0 or 1
    assert np.mean([p.probability for p in after]) < np.mean([p.probability for p in before]) - 0.04
    assert calibration_report(result.descriptions["int8"])[0].startswith(
        "site calibration: unlabelled, 30 images")


def test_unlabelled_needs_enough_images(tmp_path):
    site = make_site(tmp_path / "site", {"NORMAL": 6, "PNEUMONIA": 4}, flatter, labelled=False)
    with pytest.raises(DatasetError, match="10 readable images.*at least 25"):
        pneumocnn.calibrate(None, site, tmp_path / "out", unlabelled=True)


def test_a_fixed_threshold_keeps_its_value_a_sensitivity_threshold_keeps_its_decisions():
    rng = np.random.default_rng(0)
    probabilities = rng.beta(1, 3, 500)  # a site with far fewer pneumonias than 0.7
    fixed = ModelDescription(threshold=0.5, bias=0.3, info={"threshold_source": "fixed"})
    chosen = ModelDescription(threshold=0.8, bias=0.3, info={
        "threshold_source": "validation sensitivity >= 0.97",
        "thresholds": {"fixed_0.5": 0.5, "sensitivity_0.97": 0.8}})
    site, found = fit_unlabelled(fixed, probabilities, 0.7)
    assert site.threshold == 0.5 and found.to_dict()["threshold_rule"].startswith("kept")
    assert site.bias == pytest.approx(0.3 + found.bias_shift) and found.bias_shift < 0
    site, found = fit_unlabelled(chosen, probabilities, 0.7)
    assert site.threshold < 0.8 and site.info["thresholds"] == {
        "fixed_0.5": 0.5, "sensitivity_0.97": site.threshold}
    raw = rng.random(2000)
    assert np.array_equal(chosen.calibrate(raw) >= chosen.threshold,
                          site.calibrate(raw) >= site.threshold)


def test_calibration_prior_says_where_it_comes_from():
    counts = {"train_counts": [100, 300], "validation_counts": [10, 40]}
    assert calibration_prior(ModelDescription(bias=0.1, info={"provenance": counts})) == (
        0.8, "its provenance's validation_counts")
    share, source = calibration_prior(ModelDescription(bias=0.1, info={"provenance": {
        "train_counts": [100, 300]}}))
    assert share == 0.75 and "no validation counts" in source
    assert calibration_prior(ModelDescription(info={"provenance": counts}))[0] == 0.75  # raw
    assert calibration_prior(ModelDescription(info={"provenance": {
        **counts, "config": {"class_weight": "balanced"}}}))[0] == 0.5
    assert calibration_prior(ModelDescription(bias=0.1, info={
        "provenance": counts, "site_calibration": {"prior": 0.3}})) == (
        0.3, "its previous site calibration")
    with pytest.raises(ModelFileError, match="training_prior"):
        calibration_prior(ModelDescription(bias=0.1))


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_calibrate_info_and_evaluate(shifted_site, tmp_path, capsys):
    out = tmp_path / "site-model"
    code = main(["calibrate", str(bundled_models()), str(shifted_site), "--out", str(out),
                 "--target-sensitivity", "0.9"])
    printed = capsys.readouterr().out
    assert code == 1  # one image could not be read; the site model was written all the same
    assert "site calibration: labelled" in printed and "skipped" in printed
    assert "scanner-error.jpeg" in printed and (out / "pneumonia-int8.tflite").exists()
    assert main(["info", str(out), "--variant", "int8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(k for k, line in enumerate(lines) if line.startswith("site calibration:"))
    assert lines[first].startswith("site calibration: labelled, 20 NORMAL, 24 PNEUMONIA")
    assert lines[first + 1].strip().startswith("recalibrated from pneumonia-int8.tflite")
    assert main(["evaluate", str(out / "pneumonia-int8.tflite"), str(shifted_site),
                 "--json"]) == 1  # the unreadable image again
    assert json.loads(capsys.readouterr().out)["n"] == 44


def test_cli_model_defaults_to_the_bundled_models_and_json(tmp_path, capsys):
    site = make_site(tmp_path / "site", {"NORMAL": 24, "PNEUMONIA": 6}, flatter, labelled=False)
    assert main(["calibrate", str(site), "--out", str(tmp_path / "out"), "--unlabelled",
                 "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert sorted(records) == ["dynamic-int8", "float16", "int8"]
    assert records["int8"]["mode"] == "unlabelled"
    assert records["int8"]["source"]["file"] == "pneumonia-int8.tflite"


def test_cli_refusal_exits_2_saying_how_many(tmp_path, capsys):
    site = make_site(tmp_path / "site", {"NORMAL": 20, "PNEUMONIA": 24}, flatter)
    assert main(["calibrate", str(TINY_INT8), str(site), "--out", str(tmp_path / "o.tflite")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pneumocnn calibrate: error:") and "at least 34 needed" in error


# ---------------------------------------------------------------------------------------------
# the record and the threshold rule as types; records written before they were


OLD_RECORDS = TEST_DATA / "old_site_records"


@pytest.mark.parametrize("mode", ["labelled", "unlabelled"])
def test_a_record_written_before_the_types_still_loads_and_reads_the_same(mode, tmp_path,
                                                                          capsys):
    """The descriptions of two site calibrations written by pneumocnn before its site record
    was typed (tests/data/README.md): each loads as a model, reads into a SiteRecord that
    writes back the very JSON it was read from, and is reported by ``info``."""
    text = (OLD_RECORDS / f"{mode}.json").read_text()
    description = ModelDescription.from_json(text, f"{mode}.json")
    record = SiteRecord.of(description)
    assert record is not None and record.mode == mode and record.variant == "int8"
    assert json.dumps(record.to_dict()) == json.dumps(json.loads(text)[KEY])  # same keys, order
    assert record.source.file == "tiny-int8.tflite" and record.fit.prior == pytest.approx(
        json.loads(text)[KEY]["prior"])
    path = tmp_path / "old-site.tflite"
    path.write_bytes(embed_in_tflite(TINY_INT8.read_bytes(), description))
    model = pneumocnn.load(path)
    assert SiteRecord.of(model.description) == record
    assert calibration_prior(model.description) == (record.fit.prior,
                                                    "its previous site calibration")
    assert main(["info", str(path)]) == 0
    assert f"site calibration: {mode}" in capsys.readouterr().out
    assert len(calibration_report(model.description, detailed=True)) == (
        4 if mode == "labelled" else 3)


def test_a_new_record_has_the_keys_an_old_one_has(calibrated):
    result, _ = calibrated
    old = json.loads((OLD_RECORDS / "labelled.json").read_text())[KEY]

    def keys(record: dict) -> list:
        return [(key, keys(value) if isinstance(value, dict) else None)
                for key, value in record.items()]

    new = result.records["int8"]
    assert keys({**new, "images": {}}) == keys({**old, "images": {}})  # the site's classes aside
    assert result.sites["int8"] == SiteRecord.from_dict(new) and result.sites["int8"].mode == (
        "labelled")


def test_the_threshold_rule_is_read_from_the_text_training_and_calibration_write():
    def rule(source):
        return ThresholdRule.of(ModelDescription(info={} if source is None else {
            "threshold_source": source}))

    assert rule("validation sensitivity >= 0.97") == ThresholdRule("sensitivity", 0.97,
                                                                   "validation")
    assert str(rule("site sensitivity >= 0.9")) == "site sensitivity >= 0.9"
    assert rule("fixed") == rule(None) == ThresholdRule("fixed")
    assert pneumocnn.load(TINY_INT8).description.info["threshold_source"] == str(
        ThresholdRule.of(pneumocnn.load(TINY_INT8).description))
    with pytest.raises(ModelFileError, match="names no threshold rule"):
        rule("chosen by sensitivity, roughly")
    assert ThresholdRule.of_alternative("sensitivity_0.97") == "sensitivity"
    assert ThresholdRule.of_alternative("fixed_0.5") == "fixed"


def test_a_damaged_record_is_refused_naming_what_is_wrong():
    old = json.loads((OLD_RECORDS / "unlabelled.json").read_text())[KEY]
    for damaged in ({**old, "mode": "guessed"}, {k: v for k, v in old.items() if k != "source"},
                    {**old, "threshold_rule": "moved somewhat"}, "not a record"):
        with pytest.raises(ModelFileError, match="site_calibration record is incomplete"):
            SiteRecord.from_dict(damaged)
