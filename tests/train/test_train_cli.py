"""`jaxloss-train` (run as `python -m train`): end-to-end run, --help, one-line errors."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from train import cli, names
from train.config import Config
from train.presets import PRESETS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, tmp_path, timeout=240):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_end_to_end_two_short_epochs(tmp_path):
    workdir = tmp_path / "run"
    args = [
        "--epochs",
        "2",
        "--width",
        "2",
        "--batch-size",
        "32",
        "--limit-train-batches",
        "3",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--workdir",
        str(workdir),
        "--loss",
        "focal",
        "--focal-alpha",
        "0.25",
        "--schedule",
        "step",
        "--step-size",
        "1",
        "--gamma",
        "0.5",
    ]
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"results written to {workdir}" in proc.stdout
    assert proc.stdout.count("epoch ") >= 2
    for name in ("config.json", "metrics.jsonl", "curves.png", "checkpoints"):
        assert (workdir / name).exists(), name
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["lr"] for r in records] == [1e-3, 5e-4]
    assert records[0]["train_loss"] != records[1]["train_loss"]  # it trained
    for r in records:
        assert {
            "epoch",
            "lr",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "val_f1",
            "val_recall",
        } <= set(r)
        assert len(r["val_recall"]) == 10 and r["val_count"] == 359  # 20% of 1,797 digits
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["val_loss"] > 0
    config = Config.from_json((workdir / "config.json").read_text())
    assert config.loss == "focal" and config.focal_alpha == (0.25,) and config.width == 2
    assert sorted(os.listdir(workdir / "checkpoints")) == ["best_f1", "best_loss", "latest"]
    # --resume itself is tested in-process (test_train_loop.py::test_resume_matches_...)


def test_help_documents_every_config_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = {"augment": "--no-augment", "plot": "--no-plot"}
    for field in dataclasses.fields(Config):
        assert flags.get(field.name, "--" + field.name.replace("_", "-")) in text, field.name
    assert "--workdir" in text


def test_flags_map_to_config():
    args = cli.build_parser().parse_args(
        [
            "--focal-alpha",
            "1,1,1,1,1,1,100,1,1,1",
            "--imbalance",
            "6:0.01",
            "--no-augment",
            "--schedule",
            "plateau",
            "--plateau-patience",
            "3",
            "--nesterov",
            "--optimizer",
            "sgd",
            "--resume",
            "--workdir",
            "w",
        ]
    )
    config = cli.config_from_flags(args)
    assert config.focal_alpha[6] == 100.0 and len(config.focal_alpha) == 10
    assert config.imbalance == (6, 0.01) and config.augment is False
    assert config.schedule == "plateau" and config.plateau_patience == 3 and config.nesterov
    assert config.resume and args.workdir == "w"


def test_malloc_flag_is_process_level_not_config():
    assert cli.parse_flags([]).malloc == "tuned"
    args = cli.parse_flags(["--malloc", "default"])
    assert args.malloc == "default"
    assert cli.config_from_flags(args) == Config()  # not part of the run's config (resume-safe)


def test_presets_set_defaults_that_flags_override():
    config = cli.config_from_flags(cli.parse_flags(["--preset", "mnist_imbalance_seed003"]))
    assert (config.dataset, config.model, config.epochs, config.imbalance) == (
        "mnist",
        "lenet",
        5,
        (6, 0.01),
    )
    assert config.focal_alpha[6] == 100.0 and config.loss == "focal"
    config = cli.config_from_flags(
        cli.parse_flags(["--preset", "imagefolder_seed000", "--epochs", "3", "--data-dir", "/d"])
    )
    assert (config.model, config.schedule, config.step_size, config.epochs) == (
        "resnet18",
        "step",
        7,
        3,
    )
    assert cli.config_from_flags(cli.parse_flags(["--preset", "digits"])) == Config()
    for name in PRESETS:
        cli.config_from_flags(cli.parse_flags(["--preset", name]))  # every preset is valid


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["--lr", "abc"], 2, "error: argument --lr: invalid float value: 'abc'"),
        (["--imbalance", "6"], 2, "error: argument --imbalance: expected CLASS:FRACTION"),
        (["--model", "vgg"], 2, "error: argument --model: invalid choice: 'vgg'"),
        (["--lr", "-1"], 1, "error: lr must be a finite number >= 0.0, got lr=-1.0"),
        (["--epochs", "0"], 1, "error: epochs must be an integer >= 1, got epochs=0"),
        (
            ["--disturb-label", "150"],
            1,
            "error: disturb_label must be a finite number in [0.0, 100.0]",
        ),
        (["--resume"], 1, "error: --resume needs the --workdir"),
    ],
)
def test_bad_flags_give_one_error_line(argv, code, message, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == code
    assert err.count("\n") == 1 and err.startswith(message), err


def test_bad_data_gives_one_error_line_and_no_traceback(tmp_path):
    proc = _run(
        [
            "--dataset",
            "imagefolder",
            "--data-dir",
            str(tmp_path / "missing"),
            "--workdir",
            str(tmp_path / "w"),
        ],
        tmp_path,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0], proc.stderr
    assert not (tmp_path / "w").exists()  # a failed start leaves no half-made workdir


def test_cli_choices_match_the_registries():
    from train import losses, models

    assert set(names.MODELS) == set(models.MODELS)
    assert set(names.LOSSES) == set(losses.LOSSES)
    from train import optim

    assert set(names.OPTIMIZERS) == set(optim.OPTIMIZERS)


def test_help_shows_each_default_once_and_none_for_switches(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: True)" not in out and "(default: False)" not in out
    blocks = [" ".join(block.split()) for block in out.split("\n  --")]
    twice = [
        b for b in blocks if "(default: " in b and ("(default " in b or b.count("(default:") > 1)
    ]
    assert not twice, twice  # e.g. "(default 0.2) (default: None)"
    assert "--eval-batch-size EVAL_BATCH_SIZE default: --batch-size" in " ".join(out.split())
    assert "--no-plot do not write curves.png" in " ".join(out.split())


def test_a_core_only_install_says_which_extra_to_install(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_missing_train_extra", lambda: ["flax", "optax"])
    assert cli.main(["--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: the trainer needs the [train] extra (missing: flax, optax): "
        "pip install 'jaxloss[train]'\n"
    )


def test_preparing_the_digits_says_one_true_line(tmp_path, capfd):
    from train.data.digits import prepare_digits

    prepare_digits(tmp_path)
    out, err = capfd.readouterr()
    assert out == ""
    assert err.startswith("preparing the embedded digits dataset once in ") and err.count("\n") == 1
    assert "Download" not in err and "WARNING" not in err
    prepare_digits(tmp_path)  # prepared: silent
    assert capfd.readouterr() == ("", "")


def test_preset_with_resume_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    status = cli.main(["--preset", "digits", "--resume", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert err.startswith("error: --preset cannot be combined with --resume")
