"""rundir: atomic writes, stage folder numbering, metrics.jsonl that survives a crash, and an early refusal of a
run directory that cannot be written."""

from __future__ import annotations

import json
import os

import pytest
from matplotlib.figure import Figure

from recipe.check import Check
from recipe.errors import ConfigError, StorageError
from recipe.rundir import RunDir, stage_folder, write_atomic


@pytest.fixture
def rundir(tmp_path):
    rd = RunDir(tmp_path / "run", ["baseline", "my_probe"])
    rd.create()
    yield rd
    rd.close()


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---- atomic writes ----------------------------------------------------------------------------------------------


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_every_writer_leaves_only_its_files(rundir):
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    paths = [
        rundir.save_json("baseline", "table.json", {"x": [1, 2]}),
        rundir.save_text("baseline", "note.txt", "hi"),
        rundir.save_figure("baseline", "curve.png", fig),
        rundir.save_json("my_probe", "t.json", [1]),
    ]
    rundir.write_checks([Check("loss_at_init", "pass", stage="baseline")])
    rundir.write_manifest({"seed": 0})
    rundir.write_report("<html></html>")
    assert paths == ["02_baseline/table.json", "02_baseline/note.txt", "02_baseline/curve.png", "07_my_probe/t.json"]
    assert (rundir.path / "02_baseline" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert leftovers(rundir.path) == []
    assert sorted(p.name for p in rundir.path.iterdir()) == [
        ".lock",  # held until close()
        ".recipe",  # the ledger: what recipe wrote here
        "02_baseline",
        "07_my_probe",
        "checks.json",
        "manifest.json",
        "report.html",
    ]


def test_checks_and_manifest_read_back(rundir):
    checks = [
        Check("loss_at_init", "warn", 2.3, [2.2, 2.4], "msg", stage="baseline", seconds=0.5),
        Check("overfit_batch", "fail", {"loss": 1.0}, None, "bad", stage="overfit", artifacts=("03_overfit/a.png",)),
    ]
    rundir.write_checks(checks)
    rundir.write_manifest({"seed": 3, "nan": float("nan")})
    assert [c.to_dict() for c in rundir.read_checks()] == [c.to_dict() for c in checks]
    assert json.loads((rundir.path / "checks.json").read_text())[0]["name"] == "loss_at_init"
    assert rundir.read_manifest()["seed"] == 3


# ---- metrics.jsonl ----------------------------------------------------------------------------------------------


def test_metrics_log_appends_records_tagged_with_stage_and_run(rundir):
    log = rundir.metrics_log("baseline", "full")
    log({"step": 1, "split": "train", "metric": "loss", "value": 2.5})
    rundir.metrics_log("overfit", "one_batch")({"step": 2, "split": "train", "metric": "loss", "value": 0.5})
    assert rundir.read_metrics() == [
        {"stage": "baseline", "run": "full", "step": 1, "split": "train", "metric": "loss", "value": 2.5},
        {"stage": "overfit", "run": "one_batch", "step": 2, "split": "train", "metric": "loss", "value": 0.5},
    ]


@pytest.mark.parametrize(
    ("tail", "records"),
    [
        ("", 2),
        ('{"step": 3, "val', 2),  # a crash mid-write
        ('{"step": 3}\n\n', 3),  # a blank line
    ],
)
def test_read_metrics_tolerates_a_torn_last_line(tmp_path, tail, records):
    rd = RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n' + tail)
    assert [r["step"] for r in rd.read_metrics()] == list(range(1, records + 1))


def test_reading_an_empty_run_directory(tmp_path):
    rd = RunDir(tmp_path)
    assert (rd.read_metrics(), rd.read_checks(), rd.read_manifest()) == ([], [], {})


# ---- stage folders ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "extra", "folder"),
    [
        ("inspect", (), "01_inspect"),
        ("baseline", (), "02_baseline"),
        ("overfit", (), "03_overfit"),
        ("complexify", (), "04_complexify"),
        ("regularize", (), "05_regularize"),
        ("tune", ("tune", "custom"), "06_tune"),
        ("custom", (), "07_custom"),
        ("custom", ("baseline", "custom"), "07_custom"),
        ("second", ("baseline", "first", "second"), "08_second"),
        ("second", ("first", "second", "first"), "08_second"),  # repeats count once
        ("unlisted", ("first", "second"), "09_unlisted"),
    ],
)
def test_stage_folder_numbering(stage, extra, folder):
    assert stage_folder(stage, extra) == folder


# ---- create -----------------------------------------------------------------------------------------------------


def test_create_makes_parents_and_replaces_only_what_recipe_wrote_for_the_stages_run_again(tmp_path):
    path = tmp_path / "a" / "b"
    rd = RunDir(path, ["inspect", "baseline"])
    rd.create()
    rd.save_json("baseline", "x.json", {})
    rd.save_json("inspect", "y.json", {})
    rd.write_checks([])
    rd.close()
    (path / "notes.md").write_text("mine")
    (path / "02_baseline" / "mine.txt").write_text("mine")
    (path / "data").mkdir()
    rd = RunDir(path, ["inspect", "baseline"])
    rd.create(replace=["baseline"])
    rd.close()
    kept = sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))
    assert kept == [".recipe", "01_inspect", "01_inspect/y.json", "02_baseline", "02_baseline/mine.txt",
                    "checks.json", "data", "notes.md"]  # fmt: skip


def test_a_folder_recipe_did_not_create_is_refused_untouched(tmp_path):
    (tmp_path / "train.csv").write_text("a,b")
    (tmp_path / "42_results").mkdir()
    (tmp_path / "42_results" / "final.txt").write_text("0.93")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match="non-empty folder that recipe did not create"):
        RunDir(tmp_path).create()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_recipe_never_overwrites_a_file_it_did_not_write(tmp_path):
    rd = RunDir(tmp_path / "run", ["baseline"])
    rd.create()
    (tmp_path / "run" / "02_baseline").mkdir()
    (tmp_path / "run" / "02_baseline" / "curve.json").write_text("mine")
    with pytest.raises(StorageError, match="recipe did not write it"):
        rd.save_json("baseline", "curve.json", {})
    assert (tmp_path / "run" / "02_baseline" / "curve.json").read_text() == "mine"
    rd.close()


def test_a_delete_never_goes_through_a_symbolic_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    rd = RunDir(tmp_path / "run", ["baseline"])
    rd.create()
    rd.save_json("baseline", "x.json", {})
    rd.close()
    (outside / "x.json").write_text("precious")
    folder = tmp_path / "run" / "02_baseline"
    (folder / "x.json").unlink()
    folder.rmdir()
    folder.symlink_to(outside)  # the stage folder now points at the user's folder
    rd = RunDir(tmp_path / "run", ["baseline"])
    rd.create(replace=["baseline"])
    rd.close()
    assert (outside / "x.json").read_text() == "precious"


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("manifest.json", '{"seed": 0, "sta', "manifest.json is malformed"),
        ("manifest.json", "[1, 2]", "manifest.json is malformed"),
        ("checks.json", '[{"name": "a"', "checks.json is malformed"),
        ("checks.json", '[{"nme": "a"}]', "checks.json is malformed"),
        ("metrics.jsonl", '{"step": 1}\n{"ste\n{"step": 3}\n', "metrics.jsonl is malformed at line 2"),
    ],
)
def test_a_malformed_run_file_is_a_one_line_error_naming_it(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    rd = RunDir(tmp_path)
    with pytest.raises(ConfigError, match=match) as info:
        rd.read_manifest(), rd.read_checks(), rd.read_metrics()
    assert "\n" not in str(info.value)


def test_an_empty_lock_is_refused_with_the_fix(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.create()
    rd.close()
    (tmp_path / "run" / ".lock").write_text("")
    with pytest.raises(ConfigError, match=r"\.lock is empty or unreadable.*delete"):
        RunDir(tmp_path / "run").create()


def _under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "run"


def _the_file_itself(tmp_path):
    (tmp_path / "file").write_text("")
    return tmp_path / "file"


def _read_only_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / "run"


@pytest.mark.parametrize(
    "make_path",
    [_under_a_file, _the_file_itself, _read_only_folder],
    ids=["under-a-file", "is-a-file", "read-only-folder"],
)
def test_create_refuses_an_unwritable_directory(tmp_path, make_path):
    path = make_path(tmp_path)
    with pytest.raises(ConfigError, match=rf"run_dir {path} is not writable \(.+\); choose another --run-dir"):
        RunDir(path).create()


def test_atomic_writes_get_the_permissions_of_any_new_file(tmp_path):
    from recipe.checkpoint import save_atomic
    from recipe.rundir import write_atomic

    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "checks.json", b"[]")
        save_atomic({"step": 1}, tmp_path / "last.pt")
    finally:
        os.umask(umask)
    for name in ("checks.json", "last.pt", "last.pt.sha256"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name  # not mkstemp's 0600


def assert_cropped_as_matplotlib_would(rundir, figure) -> None:
    """`figure()` saved by `save_figure` and by matplotlib's bbox_inches="tight" at the same dpi: the same pixels."""
    import io

    import numpy as np
    from PIL import Image

    saved = rundir.path / rundir.save_figure("inspect", "figure.png", figure())
    reference = io.BytesIO()
    figure().savefig(reference, format="png", dpi=110, bbox_inches="tight")
    ours, theirs = (np.asarray(Image.open(f).convert("RGB")) for f in (saved, reference))
    assert ours.shape == theirs.shape and (ours == theirs).all()


@pytest.mark.parametrize(("layout", "dpi"), [(None, 100), (None, 200), ("constrained", 100)])
def test_a_saved_figure_is_cropped_exactly_as_matplotlibs_tight_box(rundir, layout, dpi):
    """save_figure measures the tight box instead of drawing the figure an extra time: the PNG must not change, with
    the artists that place themselves late (a legend at "best", a colorbar, a suptitle, rotated labels, a title
    above a top axis) and with a layout engine, which keeps matplotlib's own way."""
    import numpy as np

    def figure() -> Figure:
        fig = Figure(figsize=(5, 3), layout=layout, dpi=dpi)  # saved at 110 dpi whatever it was made at
        left, right = fig.subplots(1, 2)
        left.plot(np.arange(50), np.sin(np.arange(50) / 5), label="a long legend entry")
        left.legend(loc="best")
        left.set_xticks(range(0, 50, 10), [f"label {i}" for i in range(5)], rotation=60)
        image = right.imshow(np.random.default_rng(0).random((8, 8)))
        fig.colorbar(image, ax=right, label="value")
        right.xaxis.tick_top()
        right.set_title("title above ticks")
        fig.suptitle("a suptitle")
        return fig

    assert_cropped_as_matplotlib_would(rundir, figure)


@pytest.mark.parametrize("kind", ["inset", "3d", "polar", "twin_and_outside_legend"])
def test_a_users_figure_is_cropped_exactly_as_matplotlibs_tight_box(rundir, kind):
    """A stage of the user's may save any figure: kinds recipe never draws crop the same as matplotlib's own way."""
    import numpy as np

    def figure() -> Figure:
        fig, points = Figure(figsize=(4, 3)), np.random.default_rng(0).random((3, 20))
        if kind == "inset":
            ax = fig.subplots()
            ax.plot(points[0])
            ax.inset_axes([0.6, 0.6, 0.5, 0.5]).plot(points[1])
        elif kind in ("3d", "polar"):
            ax = fig.add_subplot(projection=kind)
            ax.plot(*points[: 3 if kind == "3d" else 2])
        else:
            ax = fig.subplots()
            ax.plot(points[0], label="left")
            ax.twinx().set_ylabel("right axis")
            ax.legend(loc="center left", bbox_to_anchor=(1.1, 0.5))
        return fig

    assert_cropped_as_matplotlib_would(rundir, figure)
