"""The command line's help is made from the registries: every entry of each registry is a choice
of its option and is named, with its phrase, in that option's help (``pneumocnn VERB --help``);
each verb is one module of ``pneumocnn.commands`` registered once."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO, real_images

import pneumocnn
from pneumocnn import cli
from pneumocnn.cli import main
from pneumocnn.clinic.triage import HEATMAPS
from pneumocnn.core.preprocessing import CROPS_ABOUT, NORMALIZATIONS_ABOUT, Preprocessing, preprocess
from pneumocnn.training.augmentations import AUGMENTATIONS
from pneumocnn.training.export import QUANTIZATIONS
from pneumocnn.training.settings import (
    ARCHITECTURE_NAMES,
    ARCHITECTURES_ABOUT,
    RECIPES,
    RECIPES_ABOUT,
    STRATEGIES_ABOUT,
)

VERBS = ["predict", "evaluate", "calibrate", "explain", "triage", "listen", "info", "train", "convert"]


def _option_help(verb: str, option: str, capsys, monkeypatch) -> tuple[list[str], str]:
    """``(choices, help text)`` of ``option`` as ``pneumocnn VERB --help`` prints them, read
    from a help wide enough that no line wraps."""
    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit) as exit:
        main([verb, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    found = re.search(rf"^  (?:-\S+ \S+, )?{re.escape(option)} \{{([^}}]*)\}}\s+(.*)$", text, re.M)
    assert found, f"{option} not in `pneumocnn {verb} --help`:\n{text}"
    return found.group(1).split(","), found.group(2)


def _registries() -> list[tuple[str, str, dict[str, str]]]:
    """``(verb, option, {entry: its phrase, or "" where the registry holds names only: those
    are listed as the option's choices alone})``."""
    return [
        ("train", "--augmentation", {name: a.about for name, a in AUGMENTATIONS.items()}),
        ("train", "--architecture", ARCHITECTURES_ABOUT),
        ("train", "--recipe", RECIPES_ABOUT),
        ("train", "--strategy", STRATEGIES_ABOUT),
        ("train", "--normalize", NORMALIZATIONS_ABOUT),
        ("train", "--crop", CROPS_ABOUT),
        ("triage", "--heatmaps", dict.fromkeys(HEATMAPS, "")),
        ("listen", "--heatmaps", dict.fromkeys(HEATMAPS, "")),
        ("convert", "--quantization", dict.fromkeys(QUANTIZATIONS, "")),
    ]


@pytest.mark.parametrize(("verb", "option", "registry"), _registries(),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_every_registry_entry_is_a_choice_named_in_the_help(verb, option, registry, capsys,
                                                            monkeypatch):
    choices, help_text = _option_help(verb, option, capsys, monkeypatch)
    assert sorted(choices) == sorted(registry)  # listed as {a,b,...} on the option's line
    for name, phrase in registry.items():
        if phrase:
            assert f"{name}: {phrase}" in help_text, f"{name} not in {option}'s help"


def test_the_augmentation_help_names_mixup(capsys, monkeypatch):
    """The entry the typed-out help once left out."""
    _, help_text = _option_help("train", "--augmentation", capsys, monkeypatch)
    assert "shift-zoom-mixup: shift-zoom with mixup" in help_text


def test_the_registries_agree_with_what_they_describe():
    assert tuple(RECIPES) == tuple(RECIPES_ABOUT)
    assert tuple(ARCHITECTURES_ABOUT) == ARCHITECTURE_NAMES
    abouts = [augmentation.about for augmentation in AUGMENTATIONS.values()]
    assert all(abouts) and len(set(abouts)) == len(abouts), "each augmentation says what it is for"
    assert all("about" not in augmentation.to_dict() for augmentation in AUGMENTATIONS.values())


@pytest.mark.parametrize("crop", list(CROPS_ABOUT))
@pytest.mark.parametrize("normalize", list(NORMALIZATIONS_ABOUT))
def test_every_listed_normalization_and_crop_preprocesses_an_xray(normalize, crop):
    spec = Preprocessing(height=64, width=64, channels=1, normalize=normalize, crop=crop)
    pixels = preprocess(real_images("PNEUMONIA", 1)[0], spec)
    assert pixels.shape[-3:] == (64, 64, 1) and 0 <= pixels.min() <= pixels.max() <= 1


def test_each_verb_is_registered_once_in_help_order(capsys, monkeypatch):
    assert [command.name for command in cli.COMMANDS] == VERBS
    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = re.findall(r"^    (\w+) +\w", capsys.readouterr().out, re.M)
    assert listed == VERBS


def test_python_dash_m_and_the_console_script_run_cli_main():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="pneumocnn")
    assert script.load() is main
    result = subprocess.run([sys.executable, "-m", "pneumocnn", "--version"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout == f"pneumocnn {pneumocnn.__version__}\n"
