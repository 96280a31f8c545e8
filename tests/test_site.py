"""pneumocnn.runtime.site: site calibration, labelled and unlabelled, on "sites" made of the real
X-rays in tests/data, altered as acquisition at another site alters them and mixed at another
pneumonia share than the training data's (0.742), written as real files; and the command line.

The shipped X-rays come from the data set the bundled model was trained on, so the model ranks
them well; what a site changes here is framing, exposure and the share of pneumonia."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_INT8, real_images
from PIL import Image, ImageOps

import pneumocnn
from pneumocnn.cli import main
from pneumocnn.core.errors import DatasetError, ModelFileError
from pneumocnn.core.modelfile import ModelDescription
from pneumocnn.runtime.model import bundled_models
from pneumocnn.runtime.site import (
    calibration_prior,
    describe,
    fit_unlabelled,
    required_images,
)

HOME_SHARE = 388 / (135 + 388)  # the bundled model's validation split, where it was calibrated


def gamma(image: Image.Image, exponent: float) -> Image.Image:
    return image.point([round(255 * (v / 255) ** exponent) for v in range(256)])


def zoomed_out(image: Image.Image) -> Image.Image:
    """A wider field of view: the X-ray shrunk inside a black frame of 9 % each side, then
    darker (gamma 1.5); the bundled model misses most pneumonias on such images."""
    w, h = image.size
    pad_w, pad_h = int(0.09 * w), int(0.09 * h)
    inner = image.resize((w - 2 * pad_w, h - 2 * pad_h))
    return gamma(ImageOps.expand(inner, (pad_w, pad_h), fill=0), 1.5)


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
    """24 pneumonias and 20 normals (share 0.545), zoomed out and darker, plus one file that is
    not an image."""
    root = make_site(tmp_path_factory.mktemp("site") / "xrays",
                     {"NORMAL": 20, "PNEUMONIA": 24}, zoomed_out)
    (root / "NORMAL" / "scanner-error.jpeg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def calibrated(shifted_site, tmp_path_factory):
    """The bundled models calibrated on the shifted site for sensitivity 0.9."""
    out = tmp_path_factory.mktemp("site-model") / "ours"
    return pneumocnn.calibrate(None, shifted_site, out, target_sensitivity=0.9), out


# ---------------------------------------------------------------------------------------------
# labelled


def test_calibration_recovers_the_target_sensitivity_at_a_shifted_site(shifted_site, calibrated):
    """Before: the bundled model misses most pneumonias of the zoomed-out site. After: the site
    model reaches the target on the site's images, and the cross-validated estimate (each image
    judged by a threshold chosen without it) is near it too."""
    result, out = calibrated
    before = pneumocnn.evaluate(pneumocnn.load(variant="float16"), shifted_site).metrics
    after = pneumocnn.evaluate(pneumocnn.load(out, variant="float16"), shifted_site).metrics
    assert before["sensitivity"] < 0.5
    assert after["sensitivity"] >= 0.9 and after["specificity"] >= 0.8
    assert after["n"] == 44 and len(after["unreadable"]) == 1
    cross_validated = result.record["cross_validated"]
    assert cross_validated["folds"] == 5
    assert cross_validated["sensitivity"] >= 0.8
    for name in ("sensitivity", "specificity"):
        low, high = cross_validated[f"{name}_ci"]
        assert low <= cross_validated[name] <= high and high - low > 0.05
    assert result.record["in_sample"]["sensitivity"] == pytest.approx(after["sensitivity"])


def test_the_site_model_records_its_calibration_and_its_origin(calibrated):
    result, out = calibrated
    assert sorted(p.name for p in out.iterdir()) == ["pneumonia-float16.tflite",
                                                     "pneumonia-int8.tflite"]
    model = pneumocnn.load(out)  # the folder still loads, choosing a variant
    record = model.description.info["site_calibration"]
    assert record["mode"] == "labelled" and record["target_sensitivity"] == 0.9
    assert record["images"] == {"NORMAL": 20, "PNEUMONIA": 24} and record["unreadable"] == 1
    assert record["prior"] == pytest.approx(24 / 44) and record["fitted_on"] == "float16"
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
    # one calibration for both variants, each measured on its own outputs
    int8, float16 = (pneumocnn.load(out, variant=v).description for v in ("int8", "float16"))
    assert (int8.temperature, int8.bias, int8.threshold) == (
        float16.temperature, float16.bias, float16.threshold)
    assert set(int8.info["site_calibration"]["other_variants"]) == {"float16"}
    assert result.description == float16


def test_the_report_and_info_say_what_was_done(calibrated):
    result, out = calibrated
    report = str(result)
    assert "cross-validated sensitivity" in report and "optimistic" in report
    assert len(result.unreadable) == 1 and "scanner-error.jpeg" in result.unreadable[0]
    assert f"skipped {result.unreadable[0]}" in report
    assert len(result.written) == 2 and all(str(p) in report for p in result.written.values())
    lines = describe(result.description)
    assert len(lines) == 2 and lines[0].startswith("site calibration: labelled, 20 NORMAL, 24 "
                                                   "PNEUMONIA")


def test_a_single_file_gives_a_single_file(tmp_path):
    site = make_site(tmp_path / "site", {"NORMAL": 20, "PNEUMONIA": 24}, flatter)
    out = tmp_path / "site.tflite"
    result = pneumocnn.calibrate(TINY_INT8, site, out, target_sensitivity=0.9)
    assert result.written == {"int8": out}
    record = pneumocnn.load(out).description.info["site_calibration"]
    assert record["fitted_on"] == "int8" and record["other_variants"] == {}
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
    assert np.mean([p.probability for p in after]) < np.mean([p.probability for p in before]) - 0.05
    assert describe(result.description)[0].startswith("site calibration: unlabelled, 30 images")


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
    assert site.threshold == 0.5 and found["threshold_rule"].startswith("kept")
    assert site.bias == pytest.approx(0.3 + found["bias_shift"]) and found["bias_shift"] < 0
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
    assert lines[1].startswith("site calibration: labelled, 20 NORMAL, 24 PNEUMONIA")
    assert lines[2].strip().startswith("recalibrated from pneumonia-int8.tflite")
    assert main(["evaluate", str(out / "pneumonia-int8.tflite"), str(shifted_site),
                 "--json"]) == 1  # the unreadable image again
    assert json.loads(capsys.readouterr().out)["n"] == 44


def test_cli_model_defaults_to_the_bundled_models_and_json(tmp_path, capsys):
    site = make_site(tmp_path / "site", {"NORMAL": 24, "PNEUMONIA": 6}, flatter, labelled=False)
    assert main(["calibrate", str(site), "--out", str(tmp_path / "out"), "--unlabelled",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mode"] == "unlabelled" and record["source"]["file"].startswith("pneumonia-")


def test_cli_refusal_exits_2_saying_how_many(tmp_path, capsys):
    site = make_site(tmp_path / "site", {"NORMAL": 20, "PNEUMONIA": 24}, flatter)
    assert main(["calibrate", str(TINY_INT8), str(site), "--out", str(tmp_path / "o.tflite")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("pneumocnn calibrate: error:") and "at least 34 needed" in error
