"""Issue 8's bad inputs: each is a `RecipeError` naming the field and the fix, raised before any training; the CLI
prints it as one line with exit status 2 (a traceback with --debug) and leaves no run directory behind.

The bad tasks are built by `build(case)`; the CLI tests reach the same builders through a task module written into
the test's folder (`task: badtasks:make_task`, `task_args: {case: ...}`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import recipe
from recipe import ConfigError, Recipe, RecipeError, Task, TaskError, cli, fit, loading
from recipe.config import load_yaml, split_config
from recipe.errors import StorageError
from recipe.stages import STAGES
from tests.conftest import TinyDataset
from tests.reliability import scenarios as sc

REPO = Path(recipe.__file__).resolve().parents[1]

# ---- the bad tasks ------------------------------------------------------------------------------------------------


def _points(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, x[:, :3].argmax(1)


def _mlp(out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, out))


def _with(y: torch.Tensor, index: int, value: int) -> torch.Tensor:
    y = y.clone()
    y[index] = value
    return y


class _Shared:
    """A factory that hands out one instance again and again."""

    def __init__(self):
        self.model = _mlp()

    def __call__(self) -> nn.Module:
        return self.model


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        return self.net(x), x


class _DictNet(_TupleNet):
    def forward(self, x):
        return {"logits": self.net(x)}


class _Squeezed(_TupleNet):
    def __init__(self):
        super().__init__()
        self.net = _mlp(out=1)

    def forward(self, x):
        return self.net(x).squeeze(-1)  # (B,) against (B, 1) targets


class _ConvNet(nn.Module):
    """Wants (N, 1, 8, 8) images."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


def _per_sample_loss(output, target):
    return F.cross_entropy(output, target, reduction="none")


class _Overstated(TinyDataset):
    """A Dataset whose __len__ counts 10 samples more than __getitem__ serves."""

    def __len__(self):
        return len(self.y) + 10


class _LanguageModel(nn.Module):
    """Token ids 0..9 through an embedding of 10, then logits over 10 classes."""

    def __init__(self, vocab: int = 10):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, ids):
        return self.head(self.embed(ids))


def _tokens(n: int, seed: int, bad_at: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10, (n, 7), generator=g)
    if bad_at is not None:
        ids[bad_at, 3] = 12  # past the embedding's 10 rows, in a sample the 2-sample forward does not see
    return ids, ids.roll(-1, 1)


def _images_channels_last(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, y = _points(n, seed)
    return torch.randn(n, 8, 8, 1, generator=torch.Generator().manual_seed(seed)), y


CASES = {  # case -> (train, val) -> Task; train holds 80 samples, val 20
    "clean": lambda tr, va: Task(tr, va, _mlp, name="bad"),
    "labels_out_of_range": lambda tr, va: Task((tr[0], _with(tr[1], 3, 7)), va, _mlp, num_classes=3),
    "negative_labels": lambda tr, va: Task(tr, (va[0], _with(va[1], 0, -1)), _mlp, num_classes=3),
    "float_labels": lambda tr, va: Task((tr[0], tr[1].float()), (va[0], va[1].float()), _mlp, kind="classification"),
    "head_narrower": lambda tr, va: Task(tr, va, lambda: _mlp(out=2)),
    "head_wider": lambda tr, va: Task(tr, va, lambda: _mlp(out=5), num_classes=3),
    "output_B1_target_B": lambda tr, va: Task(
        (tr[0], tr[0][:, 0]), (va[0], va[0][:, 0]), lambda: _mlp(out=1), loss="mse"
    ),
    "output_B_target_B1": lambda tr, va: Task((tr[0], tr[0][:, :1]), (va[0], va[0][:, :1]), _Squeezed, loss="mse"),
    "empty_train": lambda tr, va: Task((tr[0][:0], tr[1][:0]), va, _mlp),
    "empty_val": lambda tr, va: Task(tr, TinyDataset(va[0][:0], va[1][:0]), _mlp),
    "missing_val": lambda tr, va: Task(tr, None, _mlp),
    "small_train": lambda tr, va: Task((tr[0][:40], tr[1][:40]), va, _mlp),  # 40 < train.batch_size 64
    "same_instance": lambda tr, va: Task(tr, va, _Shared()),
    "returns_tuple": lambda tr, va: Task(tr, va, _TupleNet),
    "returns_dict": lambda tr, va: Task(tr, va, _DictNet),
    "loss_not_scalar": lambda tr, va: Task(tr, va, _mlp, loss=_per_sample_loss),
    "float64_inputs": lambda tr, va: Task((tr[0].double(), tr[1]), (va[0].double(), va[1]), _mlp),
    "channels_last": lambda tr, va: Task(_images_channels_last(80, 0), _images_channels_last(20, 1), _ConvNet),
    "zero_dim_target": lambda tr, va: Task((tr[0], torch.tensor(1)), va, _mlp),
    "len_overstated": lambda tr, va: Task(_Overstated(*tr), va, _mlp, kind="classification", num_classes=3),
    "len_right": lambda tr, va: Task(TinyDataset(*tr), va, _mlp, kind="classification", num_classes=3),
    "token_ids_past_embedding": lambda tr, va: Task(_tokens(80, 0, bad_at=50), _tokens(20, 1), _LanguageModel),
    "token_ids_in_embedding": lambda tr, va: Task(_tokens(80, 0), _tokens(20, 1), _LanguageModel),
    "ladder": lambda tr, va: Task(tr, va, lambda out=3, hidden=16: _mlp(out)),
}


def build(case: str) -> Task:
    return CASES[case](_points(80, 0), _points(20, 1))


def _params(case, error, *patterns):
    return pytest.param(case, error, patterns, id=case)


# case, exception class, regexes the message must match: the field, then the fix
BAD_TASKS = [
    _params("labels_out_of_range", TaskError, r"train targets span 0\.\.7", r"num_classes=3", r"remap the labels"),
    _params("negative_labels", TaskError, r"val targets span -1\.\.2", r"remap the labels"),
    _params("float_labels", TaskError, r"train targets are torch\.float32", r"integer class ids", r"y\.long\(\)"),
    _params("head_narrower", TaskError, r"output has shape \(2, 2\)", r"narrower", r"final layer"),
    _params("head_wider", TaskError, r"output has shape \(2, 5\)", r"wider", r"final layer"),
    _params(
        "output_B1_target_B",
        TaskError,
        r"output has shape \(2, 1\) but targets have shape \(2,\)",
        r"output\.squeeze\(-1\)",
    ),
    _params(
        "output_B_target_B1", TaskError, r"output has shape \(2,\) but targets have shape \(2, 1\)", r"y\.squeeze\(-1\)"
    ),
    _params("empty_train", TaskError, r"train is empty", r"at least one sample"),
    _params("empty_val", TaskError, r"val is empty", r"at least one sample"),
    _params("missing_val", TaskError, r"val is missing", r"10-20%"),
    _params("small_train", ConfigError, r"train\.batch_size=64", r"40 samples", r"batch_size <= 40"),
    _params("same_instance", TaskError, r"model factory returned the same nn\.Module instance", r"fresh model"),
    _params("returns_tuple", TaskError, r"model returned a tuple", r"override forward"),
    _params("returns_dict", TaskError, r"model returned a dict", r"override forward"),
    _params("loss_not_scalar", TaskError, r"loss returned \(2,\)", r"scalar", r"\.mean\(\)"),
    _params("float64_inputs", TaskError, r"train inputs are torch\.float64", r"\.float\(\)"),
    _params("channels_last", TaskError, r"shape \(2, 8, 8, 1\)", r"permute\(0, 3, 1, 2\)"),
    _params("zero_dim_target", TaskError, r"train: the targets are one 0-dim value", r"shape \(N,\)"),
    _params("len_overstated", TaskError, r"__len__ says 90 samples but reading sample 89 raised IndexError", r"make"),
    _params(
        "token_ids_past_embedding",
        TaskError,
        r"train input token ids span 0\.\.12",
        r"nn\.Embedding\(10, 8\) takes ids 0\.\.9",
        r"larger",
    ),
]


@pytest.mark.parametrize(("case", "error", "patterns"), BAD_TASKS)
def test_recipe_refuses_a_bad_task_before_writing_anything(tmp_path, case, error, patterns):
    run_dir = tmp_path / "run"
    with pytest.raises(error) as info:
        config = {"train": {"batch_size": 64}} if case == "small_train" else None  # a default one is clamped
        recipe = Recipe(build(case), run_dir=run_dir, stages=["overfit"], device="cpu", config=config, quiet=True)
        recipe.run()
    assert isinstance(info.value, RecipeError)
    message = str(info.value)
    assert all(re.search(p, message) for p in patterns), message
    assert "\n" not in message
    assert not run_dir.exists()  # nothing written, not even an empty folder


@pytest.mark.parametrize(("case", "error", "patterns"), [p for p in BAD_TASKS if p.id != "small_train"])
def test_fit_refuses_a_bad_task_before_training(case, error, patterns):
    logged = []
    with pytest.raises(error, match=patterns[0]):
        fit(build(case), epochs=1, batch_size=8, device="cpu", progress=False, log=logged.append)
    assert logged == []


@pytest.mark.parametrize("case", ["clean", "len_right", "token_ids_in_embedding", "ladder"])
def test_the_clean_cases_pass_validation(case):
    build(case).validate("cpu")  # so every other case fails for its own reason


def test_a_train_split_as_large_as_the_batch_is_fine(tmp_path):
    from recipe import Stage
    from recipe.check import passed

    class Nothing(Stage):
        name = "nothing"

        def run(self, ctx):
            return [passed("nothing", f"batch_size={ctx.train.batch_size}")]

    task = build("small_train")
    config = {"train": {"batch_size": 40}}
    result = Recipe(task, run_dir=tmp_path / "run", stages=[Nothing()], config=config, progress=False).run()
    assert result.ok and result.checks[0].message == "batch_size=40"


def test_an_empty_stage_list_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="stages: the list is empty"):
        Recipe(build("small_train"), run_dir=tmp_path / "run", stages=[])
    assert not (tmp_path / "run").exists()


# ---- devices ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:7"])
def test_an_unknown_device_names_device_and_the_valid_values(tmp_path, device):
    with pytest.raises(ConfigError, match=rf"device='{device}'.*(use 'auto'|visible)"):
        Recipe(build("clean"), run_dir=tmp_path / "run", device=device)
    with pytest.raises(ConfigError, match=rf"device='{device}'"):
        fit(build("clean"), epochs=1, device=device, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("data", ["tensors", "dataset"])
def test_labels_out_of_range_on_cuda_are_caught_on_the_host(tmp_path, data):
    task = build("labels_out_of_range")
    if data == "dataset":
        task = task.replace(train=TinyDataset(task.train.x, task.train.y))
    with pytest.raises(TaskError, match=r"train targets span 0\.\.7 but num_classes=3"):
        Recipe(task, run_dir=tmp_path / "run", stages=["overfit"], device="cuda", progress=False, quiet=True).run()
    with pytest.raises(TaskError, match=r"num_classes=3"):
        fit(task, epochs=1, batch_size=8, device="cuda", progress=False)
    torch.cuda.synchronize()  # a device assert would surface here and poison every later CUDA call
    assert not (tmp_path / "run").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_token_ids_past_the_embedding_on_cuda_are_caught_on_the_host():
    """An id past an nn.Embedding is a device-side assert on CUDA, which poisons every later CUDA call."""
    with pytest.raises(TaskError, match=r"train input token ids span 0\.\.12 .*nn\.Embedding\(10, 8\)"):
        fit(build("token_ids_past_embedding"), epochs=1, batch_size=8, device="cuda", progress=False)
    torch.cuda.synchronize()
    assert fit(build("token_ids_in_embedding"), epochs=1, batch_size=8, device="cuda", progress=False).steps == 10


# ---- the run directory --------------------------------------------------------------------------------------------


class _Counting:
    """A model factory that counts its calls: zero calls means no compute happened."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        return _mlp()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: tmp / "file.txt" / "run", r".*file\.txt is a file"),
        (lambda tmp: tmp / "file.txt", r"it is a file"),
    ],
    ids=["under-a-file", "is-a-file"],
)
def test_a_run_dir_that_cannot_be_a_folder_fails_before_any_compute(tmp_path, make, reason):
    (tmp_path / "file.txt").write_text("not a folder")
    factory = _Counting()
    task = Task(_points(80, 0), _points(20, 1), factory)
    factory.calls = 0
    with pytest.raises(ConfigError, match=rf"run_dir .*file\.txt.* is not writable \({reason}\); choose another"):
        Recipe(task, run_dir=make(tmp_path), stages=["overfit"], progress=False).run()
    assert factory.calls == 0
    assert (tmp_path / "file.txt").read_text() == "not a folder"


def _refuse_writes_below(monkeypatch, folder: Path) -> None:
    """chmod 0o500 on `folder`, and, for root (which writes through any mode), os.access answering as for a user."""
    folder.chmod(0o500)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else access(p, mode))


def test_a_read_only_parent_fails_before_any_compute(tmp_path, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    _refuse_writes_below(monkeypatch, parent)
    factory = _Counting()
    task = Task(_points(80, 0), _points(20, 1), factory)
    factory.calls = 0
    try:
        with pytest.raises(ConfigError, match=r"run_dir .*locked/run is not writable \(.*locked refuses writes\)"):
            Recipe(task, run_dir=parent / "run", stages=["overfit"], progress=False).run()
    finally:
        parent.chmod(0o700)
    assert factory.calls == 0 and not (parent / "run").exists()


# ---- the command line -----------------------------------------------------------------------------------------------

TASK_MODULE = """
from pathlib import Path

from tests.reliability.test_bad_inputs import build


def make_task(case="clean"):
    return build(case)


def make_task_noting_the_load(case="clean"):
    Path("data-loaded").write_text("")  # what loading a data set would do first
    return build(case)
"""

CONFIG = """\
task: badtasks:make_task
task_args: {case: clean}
run_dir: runs/bad
device: cpu
seed: 0
stages: [overfit]
train: {batch_size: 16}
overfit: {batch_size: 8, steps: 20, lr: 1.0e-2, lr_steps: 10}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder holding badtasks.py and config.yaml, as the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "badtasks", raising=False)
    (tmp_path / "badtasks.py").write_text(TASK_MODULE)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    yield config
    sys.modules.pop("badtasks", None)


def _one_line(err: str) -> str:
    assert err.startswith("recipe: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _case(case: str) -> str:
    return CONFIG.replace("case: clean", f"case: {case}").replace("{batch_size: 16}", "{batch_size: 64}")


@pytest.mark.parametrize(("case", "error", "patterns"), BAD_TASKS)
def test_cli_prints_a_bad_task_as_one_line_and_exits_2(project, capsys, case, error, patterns):
    project.write_text(_case(case))
    assert cli.main(["run", str(project)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert all(re.search(p, err) for p in patterns), err
    assert not (project.parent / "runs").exists()


def _edit(old: str, new: str):
    return lambda text: text.replace(old, new)


BAD_CONFIGS = [  # id, edit of CONFIG, extra argv, regexes: the field and the fix
    ("unknown-key", _edit("seed: 0", "sed: 0"), [], [r"unknown key 'sed'", r"did you mean 'seed'\?"]),
    ("unknown-train-key", _edit("batch_size: 16", "bach_size: 16"), [], [r"'bach_size'", r"did you mean 'batch_size'"]),
    ("wrong-type", _edit("batch_size: 16}", 'batch_size: 16, epochs: "ten"}'), [], [r"train\.epochs", r"an integer"]),
    (
        "duplicate-key",
        lambda t: t + "seed: 1\n",
        [],
        [r"config\.yaml", r"line 9", r"'seed' is given twice", "keep one"],
    ),
    (
        "python-tag",
        _edit("seed: 0", "seed: !!python/object/apply:os.system [touch pwned]"),
        [],
        [r"config\.yaml line 5", r"python/object/apply", r"safe_load"],
    ),
    ("missing-task", _edit("task: badtasks:make_task\n", ""), [], [r"no `task:`", r"module\.path:function"]),
    (
        "task-not-importable",
        _edit("badtasks:", "no_such_module_xyz:"),
        [],
        [r"cannot import 'no_such_module_xyz'", r"install it"],
    ),
    ("unknown-device", _edit("device: cpu", "device: gpu"), [], [r"device='gpu'", r"'cpu'"]),
    ("unknown-device-flag", lambda t: t, ["--device", "cuda:7"], [r"device='cuda:7'"]),
    ("small-train", _edit("case: clean", "case: small_train"), [], [r"train\.batch_size=64|batch_size", r"<= 40"]),
    (
        "run-dir-under-a-file",
        _edit("run_dir: runs/bad", "run_dir: config.yaml/run"),
        [],
        [r"run_dir config\.yaml/run", r"choose another"],
    ),
    ("stages-flag-empty", lambda t: t, ["--stages", ""], [r"--stages '' names no stage", r"leave the flag out"]),
    ("stages-flag-commas", lambda t: t, ["--stages", " , "], [r"--stages ' , ' names no stage"]),
    ("seed-negative", _edit("seed: 0", "seed: -1"), [], [r"seed=-1 is not a valid seed", r"0 to 4294967295"]),
    ("seed-too-large", _edit("seed: 0", "seed: 4294967296"), [], [r"seed=4294967296", r"0 to 4294967295"]),
    ("seed-not-an-integer", _edit("seed: 0", "seed: 1.5"), [], [r"seed must be an integer, got 1\.5"]),
    ("seed-flag-negative", lambda t: t, ["--seed", "-3"], [r"seed=-3 is not a valid seed"]),
    (
        "overfit-batch-size-0",
        _edit("overfit: {batch_size: 8,", "overfit: {batch_size: 0,"),
        [],
        [r"overfit\.batch_size=0 is out of range", r"an integer >= 1", r"`overfit` section"],
    ),
    (
        "inspect-max-samples-0",
        lambda t: t.replace("[overfit]", "[inspect, overfit]") + "inspect: {max_samples: 0}\n",
        [],
        [r"inspect\.max_samples=0 is out of range", r">= 1"],
    ),
    (
        "tune-trials-0",
        lambda t: t.replace("[overfit]", "[overfit, tune]") + "tune: {trials: 0}\n",
        [],
        [r"tune\.trials=0 is out of range", r">= 1"],
    ),
    (
        "tune-storage-scheme",
        lambda t: t.replace("[overfit]", "[overfit, tune]") + "tune: {storage: 'postgres://me:hunter2@db/study'}\n",
        [],
        [r"unknown storage scheme 'postgres'", r"postgresql://", r"^(?!.*hunter2)"],
    ),
    (
        "ladder-key",
        lambda t: (
            t.replace("case: clean", "case: ladder").replace("[overfit]", "[overfit, complexify]")
            + "complexify: {ladder: {small: {hiden: 8}, large: {hidden: 64}}}\n"
        ),
        [],
        [r"complexify\.ladder\.small", r"'hiden'", r"out, hidden"],
    ),
]


@pytest.mark.parametrize(("edit", "argv", "patterns"), [pytest.param(*c[1:], id=c[0]) for c in BAD_CONFIGS])
def test_cli_prints_a_bad_config_as_one_line_and_exits_2(project, capsys, edit, argv, patterns):
    project.write_text(edit(CONFIG).replace("{batch_size: 16}", "{batch_size: 64}"))
    before = project.read_text()
    assert cli.main(["run", str(project), *argv]) == 2
    err = _one_line(capsys.readouterr().err)
    assert all(re.search(p, err) for p in patterns), err
    assert not (project.parent / "runs").exists() and not (project.parent / "pwned").exists()
    assert project.read_text() == before


@pytest.mark.parametrize(("edit", "argv", "patterns"), [pytest.param(*c[1:], id=c[0]) for c in BAD_CONFIGS[:6]])
def test_python_api_raises_config_error_for_a_bad_yaml(project, edit, argv, patterns):
    project.write_text(edit(CONFIG))
    with pytest.raises(ConfigError) as info:
        run, _ = split_config(load_yaml(project), STAGES, str(project))
        loading.load_task(run.task, run.task_args, str(project))
    assert all(re.search(p, str(info.value)) for p in patterns), info.value


def test_an_unwritable_run_dir_fails_before_the_data_is_loaded(project, capsys):
    project.write_text(CONFIG.replace("make_task\n", "make_task_noting_the_load\n"))
    assert cli.main(["run", str(project), "--run-dir", "config.yaml/run"]) == 2
    assert re.search(r"run_dir config\.yaml/run", _one_line(capsys.readouterr().err))
    assert not (project.parent / "data-loaded").exists()
    assert cli.main(["run", str(project), "--run-dir", "runs/ok", "--stages", "inspect,tuen"]) == 2
    assert (project.parent / "data-loaded").exists()  # the module is what the first run never reached


# ---- resume with a changed config -----------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_with_a_changed_config_is_refused_with_the_changed_keys(project, capsys):
    assert cli.main(["run", str(project), "--quiet"]) in (0, 1)
    run_dir = project.parent / "runs" / "bad"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))  # as after a kill
    before = _snapshot(run_dir)
    project.write_text(CONFIG.replace("lr: 1.0e-2", "lr: 5.0e-3"))
    capsys.readouterr()
    assert cli.main(["run", str(project), "--resume", str(run_dir)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert re.search(r"config\.overfit\.lr", err) and "--force" in err, err
    assert _snapshot(run_dir) == before  # refused before touching anything
    config = {"train": {"batch_size": 16}, "overfit": {"batch_size": 8, "steps": 20, "lr": 5e-3, "lr_steps": 10}}
    resumed = Recipe(build("clean"), run_dir=run_dir, stages=["overfit"], device="cpu", config=config, resume=True)
    with pytest.raises(ConfigError, match=r"config\.overfit\.lr.*--force"):
        resumed.run()
    assert _snapshot(run_dir) == before
    assert cli.main(["run", str(project), "--resume", str(run_dir), "--force", "--quiet"]) in (0, 1)


# ---- a disk that refuses a write ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "filename", "match"),
    [
        (
            errno.ENOSPC,
            "runs/bad/03_overfit/model.pt",
            r"no space left on device writing runs/bad/03_overfit/model\.pt",
        ),
        (errno.ENOSPC, None, r"no space left on device writing .*runs/bad"),
        (errno.EDQUOT, "runs/bad/checks.json", r"quota exceeded writing runs/bad/checks\.json"),
        (errno.EROFS, "runs/bad/checks.json", r"read-only file system writing runs/bad/checks\.json"),
        (errno.EACCES, "runs/bad/checks.json", r"permission denied on runs/bad/checks\.json"),
    ],
    ids=["enospc", "enospc-no-path", "edquot", "erofs", "eacces"],
)
def test_a_full_disk_mid_run_is_one_line_naming_the_path(project, capsys, monkeypatch, code, filename, match):
    def full(self):
        raise OSError(code, os.strerror(code), filename)

    monkeypatch.setattr(Recipe, "run", full)
    assert cli.main(["run", str(project)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert re.search(match, err, re.IGNORECASE) and "--run-dir" in err, err
    with pytest.raises(StorageError) as info:
        cli.main(["--debug", "run", str(project)])
    assert isinstance(info.value, RecipeError) and isinstance(info.value.__cause__, OSError)


def test_other_os_errors_are_not_disguised(project, monkeypatch):
    def broken(self):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Recipe, "run", broken)
    with pytest.raises(OSError, match="Input/output"):
        cli.main(["run", str(project)])


# ---- the real command, in a subprocess --------------------------------------------------------------------------


def _subprocess(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "recipe.cli", *argv]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


SUBPROCESS_CASES = [
    pytest.param(_edit("case: clean", "case: labels_out_of_range"), r"train targets span 0\.\.7", id="task"),
    pytest.param(_edit("batch_size: 16}", 'batch_size: 16, epochs: "ten"}'), r"train\.epochs", id="yaml-type"),
    pytest.param(
        _edit("seed: 0", "seed: !!python/object/apply:os.system [touch pwned]"), r"config\.yaml line 5", id="yaml-tag"
    ),
    pytest.param(_edit("run_dir: runs/bad", "run_dir: config.yaml/run"), r"run_dir config\.yaml/run", id="run-dir"),
]


@pytest.mark.parametrize(("edit", "match"), SUBPROCESS_CASES)
def test_the_command_exits_2_with_one_line(tmp_path, edit, match):
    (tmp_path / "badtasks.py").write_text(TASK_MODULE)
    (tmp_path / "config.yaml").write_text(edit(CONFIG))
    done = _subprocess(tmp_path, "run", "config.yaml")
    assert done.returncode == 2, done.stderr
    assert re.search(match, _one_line(done.stderr))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("edit", "match"), SUBPROCESS_CASES[:2])
def test_debug_shows_the_traceback(tmp_path, edit, match):
    (tmp_path / "badtasks.py").write_text(TASK_MODULE)
    (tmp_path / "config.yaml").write_text(edit(CONFIG))
    done = _subprocess(tmp_path, "--debug", "run", "config.yaml")
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert re.search(r"recipe\.errors\.(Task|Config)Error", done.stderr) and re.search(match, done.stderr)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"lr": -0.1}, r"train\.lr must be a positive number, got -0\.1"),
        ({"optimizer": "adamm"}, r"train\.optimizer='adamm' is not known; use one of adamw"),
        ({"schedule": "cosin"}, r"train\.schedule='cosin' is not known; use one of constant, cosine"),
        ({"precision": "fp8"}, r"train\.precision='fp8' is not known"),
        ({"weight_decay": -0.01}, r"train\.weight_decay=-0\.01 must be >= 0"),
        ({"grad_clip": 0.0}, r"train\.grad_clip=0\.0 must be positive"),
        ({"batch_size": 0}, r"train\.batch_size must be a positive int"),
    ],
)
def test_training_settings_out_of_range_are_refused_before_anything_runs(tmp_path, train, match):
    with pytest.raises(ConfigError, match=match):
        Recipe(build("small_train"), run_dir=tmp_path / "run", config={"train": train})
    assert not (tmp_path / "run").exists()


def test_a_default_batch_size_larger_than_a_small_train_split_is_clamped_not_refused(tmp_path):
    from recipe import Stage
    from recipe.check import passed

    class Fits(Stage):
        name = "fits"

        def run(self, ctx):
            return [passed("fits", f"{ctx.fit('one', epochs=1).setup['batch_size']}")]

    task = build("small_train")  # 40 training samples; TrainSettings' batch_size is 64
    result = Recipe(task, run_dir=tmp_path / "run", stages=[Fits()], progress=False).run()
    assert result.ok and result.checks[0].message == str(len(task.train))


class _LongDataset(torch.utils.data.Dataset):
    """More samples than validation reads (SCAN_LIMIT), with one class id out of range far past that."""

    def __init__(self, n: int, bad_at: int | None):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
        if bad_at is not None:
            self.y[bad_at] = 7

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_label_out_of_range_past_the_validated_samples_is_a_task_error(device):
    """Validation reads the first SCAN_LIMIT targets of a Dataset; the rest are checked batch by batch on the host,
    so a bad one is a TaskError on CUDA too, never a device-side assert."""
    from recipe.task import SCAN_LIMIT

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    n = SCAN_LIMIT + 2_000
    val = _LongDataset(200, None)
    clean = Task(_LongDataset(n, None), val, lambda: torch.nn.Linear(4, 3), num_classes=3)
    assert fit(clean, epochs=1, batch_size=1024, device=device, progress=False).steps > 0
    task = Task(_LongDataset(n, bad_at=n - 10), val, lambda: torch.nn.Linear(4, 3), num_classes=3)
    with pytest.raises(
        TaskError,
        match=rf"past the first {SCAN_LIMIT} samples checked before training, train targets span 0\.\.7.*num_classes=3",
    ):
        fit(task, epochs=1, batch_size=1024, device=device, progress=False)


# ---- stage settings, seeds and names (issue 15, item 6) ------------------------------------------------------------

BAD_SETTINGS = [  # section, values, the message: field, value and what is expected
    ("inspect", {"max_samples": 0}, r"inspect\.max_samples=0 is out of range: it must be an integer >= 1"),
    ("inspect", {"folds": 1}, r"inspect\.folds=1 is out of range: it must be an integer >= 2"),
    ("baseline", {"steps": 0}, r"baseline\.steps=0 .* >= 1"),
    ("overfit", {"batch_size": 0}, r"overfit\.batch_size=0 is out of range: it must be an integer >= 1"),
    ("overfit", {"lr": 0.0}, r"overfit\.lr=0\.0 .* > 0"),
    ("overfit", {"lr_min": 1.0, "lr_max": 0.1}, r"overfit\.lr_max=0\.1 must be larger than overfit\.lr_min=1\.0"),
    ("complexify", {"warmup_fraction": 1.5}, r"complexify\.warmup_fraction=1\.5 .* in \[0, 1\)"),
    ("complexify", {"schedule": "step"}, r"complexify\.schedule='step': use 'cosine' or 'linear'"),
    ("regularize", {"dropouts": [0.1, 1.0]}, r"regularize\.dropouts=\(0\.1, 1\.0\) .* in \[0, 1\) \(each\)"),
    ("regularize", {"data_fractions": [0.0]}, r"regularize\.data_fractions=\(0\.0,\) .* > 0"),
    ("tune", {"trials": 0}, r"tune\.trials=0 is out of range"),
    ("tune", {"workers": 0}, r"tune\.workers=0 is out of range"),
    ("tune", {"sampler": "sobolx"}, r"tune\.sampler='sobolx': use one of sobol"),
    ("tune", {"storage": "redis://localhost:6379"}, r"tune\.storage: unknown storage scheme 'redis'"),
    ("tune", {"storage": "study.db"}, r"tune\.storage: unknown storage scheme 'study\.db'.*sqlite:///path"),
]


@pytest.mark.parametrize(("section", "values", "match"), BAD_SETTINGS, ids=lambda v: str(v)[:40])
def test_stage_settings_out_of_range_are_refused_when_the_recipe_is_built(tmp_path, section, values, match):
    with pytest.raises(ConfigError, match=match) as info:
        Recipe(build("clean"), run_dir=tmp_path / "run", stages=[section], config={section: values})
    assert "\n" not in str(info.value) and "empty" not in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("overfit", {"batch_size": 1, "lr_min": 1e-6, "lr_max": 1e-5}),
        ("regularize", {"dropouts": [0.0, 0.5], "data_fractions": [0.5], "weight_decays": [0.0]}),
        ("tune", {"trials": 1, "workers": 1, "seeds": 0, "ensemble": 0, "storage": "sqlite:///study.db"}),
        ("tune", {"storage": "postgresql+psycopg2://me@db/study"}),
        ("complexify", {"warmup_fraction": 0.0, "margin": 0.0, "schedule": "linear"}),
    ],
)
def test_settings_at_the_edge_of_their_range_are_accepted(tmp_path, section, values):
    recipe = Recipe(build("clean"), run_dir=tmp_path / "run", stages=[section], config={section: values})
    settings = recipe.stages[0].settings
    assert all(getattr(settings, k) == (tuple(v) if isinstance(v, list) else v) for k, v in values.items())


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "3", True, None])
def test_a_seed_out_of_range_or_of_the_wrong_type_is_refused(tmp_path, seed):
    with pytest.raises(ConfigError, match=r"seed=.* is not a valid seed; use an integer from 0 to 4294967295"):
        Recipe(build("clean"), run_dir=tmp_path / "run", seed=seed)
    logged, seed = [], 2**64 if seed == 2**32 else seed  # fit takes torch's range: stages derive seeds from the run's
    with pytest.raises(ConfigError, match=r"is not a valid seed"):
        fit(build("clean"), epochs=1, batch_size=8, seed=seed, device="cpu", progress=False, log=logged.append)
    assert logged == [] and not (tmp_path / "run").exists()


def test_the_seeds_at_the_ends_of_the_range_are_accepted(tmp_path):
    for seed in (0, 2**32 - 1):
        assert Recipe(build("clean"), run_dir=tmp_path / "run", seed=seed).seed == seed
    assert fit(build("clean"), epochs=1, batch_size=40, seed=2**32 + 5, progress=False).steps == 2  # derived seeds


def test_a_ladder_key_the_factory_does_not_take_is_refused_before_any_training(tmp_path):
    factory = _Counting()
    task = build("ladder")
    config = {"complexify": {"ladder": {"small": {"hidden": 8}, "large": {"hiden": 64}}}}
    recipe = Recipe(task.replace(model=lambda hidden=16: factory()), run_dir=tmp_path / "run", config=config)
    factory.calls = 0
    with pytest.raises(ConfigError, match=r"complexify\.ladder\.large: .*\(hidden=16\) does not take \['hiden'\]"):
        recipe.run()
    assert factory.calls <= 2 and not (tmp_path / "run").exists()  # the two of Task.validate; nothing trained
    fixed = Recipe(task, run_dir=tmp_path / "run", config={"complexify": {"ladder": {"large": {"hidden": 64}}}})
    fixed.stages[3].validate(task)  # the fixed twin passes


@pytest.mark.parametrize("name", ["../../etc", "/abs/path", "a/b", "..", "", ".hidden", "C:\\Users\\x", "ünï cödé"])
def test_the_default_run_dir_stays_under_runs_whatever_the_task_name(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    recipe = Recipe(build("clean").replace(name=name), stages=["overfit"])
    assert recipe.run_dir.parent == Path("runs") and len(recipe.run_dir.parts) == 2
    assert recipe.run_dir.resolve().parent == (tmp_path / "runs").resolve()
    assert not recipe.run_dir.name.startswith(".")


def test_a_plain_task_name_is_kept_as_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Recipe(build("clean").replace(name="digits-v2.1_small")).run_dir == Path("runs/digits-v2.1_small")


# ---- malformed files recipe reads (issue 15, item 5) ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(sc.MALFORMED))
def test_a_malformed_run_file_is_a_one_line_error_naming_it(tmp_path, name):
    out = sc.malformed_run_file(tmp_path, name)
    assert out.survived, f"{out.name}: {out.detail} {out.facts}"


def test_a_checkpoint_that_loads_but_lacks_keys_is_a_one_line_error_naming_it(tmp_path):
    out = sc.checkpoint_lacking_keys(tmp_path)
    assert out.survived, f"{out.name}: {out.detail} {out.facts}"
