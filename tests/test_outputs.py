"""Every command that writes checks its output location BEFORE it works: an output that cannot
be created (below a regular file, on a filesystem that refuses it) or that holds someone
else's files is one line on stderr and exit code 2, and no work was started (the expensive
step is replaced by one that fails the test if it is reached)."""
import os
from pathlib import Path

import pytest
from helpers import one_line_error, run_cli

import fixres.models.sources


def _unusable(tmp_path: Path) -> list[tuple[Path, str]]:
    """Output paths that cannot be written, with the reason the line must give."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    places = [(blocker / "out", "cannot write")]
    if os.path.isdir("/sys/kernel"):        # sysfs refuses new directories, even to root
        places.append((Path("/sys/kernel/fixres-out"), "cannot write"))
    return places


@pytest.fixture
def no_work(monkeypatch):
    """Opening a checkpoint is where every model command's work starts: reaching it fails the test."""
    def refuse(*a, **k):
        raise AssertionError("the work started before the output location was checked")
    monkeypatch.setattr(fixres.models.sources, "build_model", refuse)


@pytest.fixture
def foreign(tmp_path) -> Path:
    d = tmp_path / "theirs"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    return d


def _commands(run, data):
    """command name -> argv without --out (each writes a directory)."""
    return {
        "adapt": ["adapt", "--checkpoint", run, "--data", data, "--test-res", 48, "--workers", 0, "--quiet"],
        "export": ["export", "--checkpoint", run],
        "sweep": ["sweep", "--checkpoint", run, "--data", data, "--test-res", 32, 48, "--workers", 0, "--quiet"],
        "stats": ["stats", "--checkpoint", run, "--data", data, "--test-res", 32, "--workers", 0, "--quiet"],
        "train": ["train", "--data", data, "--model", "test_resnet", "--train-res", 32, "--epochs", 1,
                  "--batch-size", 24, "--workers", 0, "--quiet"],
    }


@pytest.mark.parametrize("command", ["adapt", "export", "sweep", "stats", "train"])
def test_unwritable_output_is_one_line_before_any_work(trained_run, colour_data, tmp_path, capsys, no_work, command):
    for out, reason in _unusable(tmp_path):
        code, _, err = run_cli(capsys, *_commands(trained_run, colour_data)[command], "--out", out)
        one_line_error(code, err, reason, str(out))
        assert not out.exists()


@pytest.mark.parametrize("command", ["adapt", "export", "train"])
def test_someone_elses_directory_is_refused_and_kept(trained_run, colour_data, foreign, capsys, no_work, command):
    code, _, err = run_cli(capsys, *_commands(trained_run, colour_data)[command], "--out", foreign)
    one_line_error(code, err, "not empty")
    if command != "export":       # export has no --overwrite
        code, _, err = run_cli(capsys, *_commands(trained_run, colour_data)[command], "--out", foreign, "--overwrite")
        one_line_error(code, err, "refusing to overwrite", "not a fixres")
    assert sorted(p.name for p in foreign.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("command", ["sweep", "stats"])
def test_result_files_already_there_are_refused_before_any_work(trained_run, colour_data, tmp_path, capsys, no_work,
                                                                command):
    out = tmp_path / "o"
    out.mkdir()
    (out / f"{command}.json").write_text("{}")
    code, _, err = run_cli(capsys, *_commands(trained_run, colour_data)[command], "--out", out)
    one_line_error(code, err, f"{command}.json", "--overwrite")


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_data_commands_grid_and_analyze_check_their_output_first(colour_data, tmp_path, capsys, monkeypatch):
    import fixres.data.packer
    import fixres.data.synth
    import fixres.experiments.grid.run
    monkeypatch.setattr(fixres.data.synth, "synthesize", lambda *a, **k: pytest.fail("rendering started"))
    monkeypatch.setattr(fixres.data.packer, "pack", lambda *a, **k: pytest.fail("packing started"))
    monkeypatch.setattr(fixres.experiments.grid.run, "ensure_data", lambda *a, **k: pytest.fail("the grid started"))
    for out, reason in _unusable(tmp_path):
        for argv in (["data", "synth", out, "--train-per-class", 2, "--val-per-class", 1, "--quiet"],
                     ["data", "pack", colour_data, out, "--quiet"],
                     ["grid", "--config", CONFIGS / "embedded-grid-ci.yaml", "--out", out, "--quiet"],
                     ["analyze", "--train-res", 64, "--sizes", "500x375", "--plot", out / "f.png"]):
            code, _, err = run_cli(capsys, *argv)
            one_line_error(code, err, reason)
            assert not out.exists()


@pytest.mark.parametrize("command", ["sweep", "stats"])
def test_an_interrupted_write_leaves_the_earlier_outputs_or_none(trained_run, colour_data, tmp_path, capsys,
                                                                 monkeypatch, command):
    """Ctrl-C while the files are written (here: during the last figure) keeps the earlier set
    whole with --overwrite, and leaves no folder at a fresh --out; never a mix."""
    import fixres.core.plots
    import fixres.measure.stats_plots
    out = tmp_path / command
    args = [command, "--checkpoint", trained_run, "--data", colour_data, "--test-res", 32, 40, "--workers", 0,
            "--batch-size", 12, "--quiet", *(["--no-timing"] if command == "sweep" else ["--images", 12]), "--out", out]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    module, name = ((fixres.core.plots, "plot_costs") if command == "sweep"
                    else (fixres.measure.stats_plots, "plot_vs_resolution"))
    monkeypatch.setattr(module, name, interrupted)
    if command == "stats":
        import fixres.measure.stats_report
        monkeypatch.setattr(fixres.measure.stats_report, name, interrupted)
    code, _, err = run_cli(capsys, *args, "--overwrite")
    assert code == 130, err and "interrupted" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before          # the earlier set, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary left
    fresh = tmp_path / "fresh"
    code, _, _ = run_cli(capsys, *args[:-1], fresh)
    assert code == 130 and not fresh.exists()
