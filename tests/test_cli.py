"""Tests for training/cli.py: the one command line and what its --help says."""
from __future__ import annotations

import re

import pytest

from training.cli import build_parser, config_from_args
from training.config import Config

STAGES = ["data", "train", "all", "publish", "deploy", "review", "convert"]


def help_text(stage: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([stage, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks


@pytest.mark.parametrize("stage", STAGES)
def test_help_shows_defaults_only_where_they_tell_something(stage, capsys):
    text = help_text(stage, capsys)
    assert not re.search(r"\(default: (None|True|False|==SUPPRESS==)\)", text)
    assert not re.search(r"default:[^()]*\) \(default:", text)  # a flag that says its default twice


def test_help_shows_the_config_defaults(capsys):
    text = help_text("all", capsys)
    d = Config()
    for flag, value in [("--epochs", d.epochs), ("--size", d.size), ("--batch-size", d.batch_size),
                        ("--arch", d.arch), ("--valid-pct", d.valid_pct), ("--license", d.license)]:
        assert re.search(rf"{flag} \S+ .*?\(default: {re.escape(str(value))}\)", text), flag


def test_deploy_help_speaks_of_the_space(capsys):
    text = help_text("deploy", capsys)
    assert "create the Space private" in text and "license in the Space's metadata" in text
    assert "publish to the Hugging Face Hub" not in text


def test_flags_fill_the_config_and_absent_ones_keep_its_defaults():
    args = build_parser().parse_args(["train", "--epochs", "2", "--no-pretrained", "--lr", "0.01"])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.pretrained, cfg.lr) == (2, False, 0.01)
    assert (cfg.size, cfg.arch, cfg.seed) == (Config().size, Config().arch, Config().seed)


@pytest.mark.parametrize("argv, words", [
    (["train", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["train", "--size", "7"], "--size: must be at least 32, got 7"),
    (["train", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["train", "--lr", "-1"], "--lr: must be above 0, got -1"),
    (["data", "--deadline", "0"], "--deadline: must be above 0"),
    (["convert", "x.pkl", "--out", "m", "--size", "0"], "--size: must be at least 32"),
    (["train", "--epochs", "two"], "--epochs: invalid int value: 'two'"),
    (["train", "--valid-pct", "1.5"], "--valid-pct: must be between 0 and 1, got 1.5"),
    (["all", "--valid-pct", "0"], "--valid-pct: must be between 0 and 1, got 0"),
])
def test_bad_values_are_refused_before_anything_runs(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_a_mistyped_flag_shows_the_stages_own_usage(capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--batchsize", "8"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "python -m training train: error: unrecognized arguments: --batchsize 8" in err
    assert "--batch-size" in err  # the usage lists the flag that was meant


@pytest.mark.parametrize("argv", [["-v", "train"], ["train", "-v"], ["convert", "x.pkl", "--out", "m", "--verbose"]])
def test_verbose_goes_before_or_after_the_stage(argv):
    assert build_parser().parse_args(argv).verbose is True


def test_not_verbose_unless_asked():
    assert build_parser().parse_args(["train"]).verbose is False


def test_the_dataset_folder_flag_is_not_filed_as_an_image_source(capsys):
    text = help_text("data", capsys)
    sources = text.split("where images come from", 1)[1].split("where the dataset goes", 1)[0]
    assert "--data" not in sources and "folder to write the dataset to" in text
