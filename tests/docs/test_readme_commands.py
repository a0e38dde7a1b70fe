"""The docs' commands are tests: every `python -m src.<entry> ...` that README.md, CONTRIBUTING.md and the
reference pages docs/*.md show (in tables, inline code and code blocks; docs/history/ is left out) is run as written, its placeholders filled with a tiny trained run. Cheap ones run fully (training
commands with short overrides appended; slow-marked); the others are composed in-process with Hydra's compose API
(every option and key exists; in the default suite) or, for entry points that are no Hydra app, asked for
`--help`. New commands are picked up by themselves; EXCEPTIONS lists those that need another treatment."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import CONF, QUICK, ROOT, TINY_VIT, compose_config, run_cli

README = ROOT / "README.md"
# the pages whose commands must work as written: the reference, not the history under docs/history/
PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"-m (src(?:\.\w+)+)((?:[^`\n\\]|\\\n)*)")
# a training command is cheap on the digits (the quickstart's data), or when it resumes (the tiny run's checkpoint)
CHEAP = re.compile(r"^(data=digits|experiment=quickstart|ckpt_path=.*)$")
# what makes a training command expensive here (a GPU, downloads, big data sets, several processes, sweeps)
EXPENSIVE = re.compile(r"data=(cifar10|flowers102)|trainer=(gpu|ddp|multinode)|pretrained=true|hparams_search=|"
                       r"hydra/launcher|model=(deit|vgg19|densenet|vit_timm)|experiment=(?!quickstart)")  # fmt: skip
# options whose full runs their own tests make (test_loggers, test_ecosystem, test_recipes): composed here; and
# what cannot run here (an MLflow server, an Apple GPU)
COVERED_ELSEWHERE = re.compile(
    r"logger=|debug=profiler|augment=|mixup=|callbacks\.ema|trainer=mps|tracking_uri="
)
# a short run of any cheap training command
SHORT = [
    *QUICK,
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "data.batch_size=16",
]  # fmt: skip  (++: debug modes set these too)
# command (as the README writes it, after `-m`) -> how it runs here, where the rules above do not fit
EXCEPTIONS = {
    # `--help` and `--cfg job` print and exit: run as written
    "src.train --help": "full",
    "src.train --cfg job data=flowers102": "full",
    # DDP with 2 gloo processes: tests/training/test_scale_out.py runs it
    "src.train data=digits trainer=ddp trainer.devices=2 trainer.accelerator=cpu": "compose",
    # needs a run that kept k checkpoints: tests/runs/test_averaging.py runs it
    "src.average run_dir=<run_dir> k=3": "compose",
}
# entry points that are no Hydra app and whose placeholders need files of their own (tests/models/test_token_learner.py,
# tests/inference/test_export.py run them): asked for --help
HELP_ONLY = ("src.token_maps", "src.bench.predict", "src.bench.serve")
# servers answer until stopped: composed here; tests/serving starts them (and src.bench.serve)
SERVERS = ("src.serve", "src.demo")


def page_commands(page: Path) -> list[str]:
    """`src.<entry> <args>` of every command on one page, once each, in order."""
    found = []
    for match in COMMAND.finditer(page.read_text()):
        args = match.group(2).replace("\\\n", " ").split("#")[0]  # continued lines; no comment
        args = re.sub(r"(?<=\s)\[[^\]]*\]", "", args)  # [optional parts] are left out, not key=[a,b] lists
        args = re.sub(r"\$\([^)]*\)", "1", args)  # a shell substitution ($(ls ...)) stands for one value
        args = re.sub(r"(?<=\s)\.\.\.(?=\s|$)", "", args)  # "..." for "more options"
        args = re.sub(r"<[^>]*>", lambda m: m.group(0).replace(" ", "_"), args)  # one placeholder, one word
        command = " ".join(f"{match.group(1)} {args}".split())
        if command not in found:
            found.append(command)
    return found


def documented_commands() -> list[str]:
    """The commands of every page in PAGES, once each."""
    return list(dict.fromkeys(command for page in PAGES for command in page_commands(page)))


def hydra_app(entry: str) -> bool:
    path = ROOT / Path(*entry.split(".")).with_suffix(".py")
    return path.is_file() and "@hydra.main" in path.read_text()


def fill(arg: str, places: dict[str, str]) -> str:
    """Placeholders (`<ckpt>`, `outputs/.../<time>/...`, `${SLURM_JOB_ID}`) -> the fixture's files or a word."""
    key, _, value = arg.partition("=")
    if key == "inputs":
        return f"inputs={places['inputs']}"
    if "|" in value and "<" not in value:  # alternatives (method=rollout|gradcam): the first
        return f"{key}={value.split('|')[0]}"
    if "<" in arg or "$" in arg or value == "...":
        if value.endswith(".onnx"):
            return f"{key}={places['onnx']}"
        if key == "ckpt_path" or key.endswith("_ckpt") or value.endswith(".ckpt"):  # distill.teacher_ckpt too
            return f"{key}={places['ckpt']}"
        if not value:  # a positional placeholder: the run dirs of src.compare
            return places["sweep"]
    return re.sub(r"<[^>]*>|\$\{?\w+\}?", "1", arg)  # a number fits keys of any type


def plan(command: str) -> str:
    entry, *args = shlex.split(command)
    if command in EXCEPTIONS:
        return EXCEPTIONS[command]
    if entry in SERVERS:
        return "compose"
    if not hydra_app(entry):
        return "full" if any("<" in a for a in args) and entry not in HELP_ONLY else "help"
    if COVERED_ELSEWHERE.search(command):
        return "compose"
    if not args:  # an entry point named in the text
        return "compose"
    if entry != "src.train":
        cheap = not any(a.startswith("data=") or "data_dir" in a for a in args)
        return "full" if cheap else "compose"
    cheap = any(CHEAP.match(a) for a in args) and not any(EXPENSIVE.search(a) for a in args)
    return "full" if cheap else "compose"


def single_job(args: list[str]) -> list[str]:
    """A sweep's first job: `--cfg job` cannot be combined with -m."""
    return [a.split(",")[0] if "=" in a and not set("([{") & set(a) else a for a in args if a != "-m"]


@pytest.fixture(scope="module")
def places(tiny_sweep, tmp_path_factory) -> dict[str, str]:
    from PIL import Image

    photos = tmp_path_factory.mktemp("photos")
    Image.new("RGB", (20, 20), "white").save(photos / "a.png")
    ckpt = tiny_sweep / "0" / "checkpoints" / "last.ckpt"  # model.depth=1, as TINY_VIT
    from src.export import export

    onnx = export(compose_config("export", [f"ckpt_path={ckpt}"], tmp_path_factory.mktemp("export")))
    return {"ckpt": str(ckpt), "onnx": str(onnx), "sweep": str(tiny_sweep), "inputs": str(photos)}


def test_the_readme_shows_commands_of_every_entry_point():
    entries = {command.split()[0] for command in page_commands(README)}
    assert {"src.train", "src.eval", "src.predict", "src.compare"} <= entries


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda page: page.name)
def test_the_commands_of_every_docs_page_are_tested(page):
    """A reference page's commands are among those the tests below run or compose (docs/history/ is not)."""
    commands = page_commands(page)
    assert set(commands) <= set(documented_commands())
    assert commands or "-m src" not in page.read_text()


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(
    "page", [*PAGES, *sorted((ROOT / "docs" / "history").glob("*.md"))], ids=lambda p: p.name
)
def test_links_between_pages_resolve(page):
    """Every relative link of a page names a file that exists, and a #heading that the file has."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"\w+://", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.MULTILINE)
            if fragment not in {anchor(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def config_name(entry: str) -> str:
    """The config of a Hydra entry point: `src.train` -> conf/train.yaml."""
    return re.search(r'config_name="(\w+)"', (ROOT / Path(*entry.split("."))).with_suffix(".py").read_text())[
        1
    ]


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in documented_commands() if plan(c) == "compose"])
def test_documented_command_composes(command, tmp_path):
    """Every option and key of the command exists (what `--cfg job` checks, in this process: a fraction of a
    second instead of a Python start-up each)."""
    entry, *args = shlex.split(command)
    overrides = [
        fill(arg, {"ckpt": "x.ckpt", "onnx": "x.onnx", "sweep": "x", "inputs": "x"})
        for arg in single_job(args)
    ]
    # as src.eval hands them to Hydra: data.<key>=... without data=... changes the checkpoint's data config
    if entry == "src.eval":
        from src.eval import checkpoint_data_overrides

        overrides = checkpoint_data_overrides(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name(entry), overrides=[*overrides, f"paths.log_dir={tmp_path}"])
    assert cfg.task_name


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in documented_commands() if plan(c) != "compose"])
def test_documented_command_works_as_written(command, places, tmp_path):
    entry, *args = shlex.split(command)
    args = [fill(arg, places) for arg in args]
    how = plan(command)
    if how == "help":
        result = run_cli(entry, "--help", cwd=tmp_path)
    elif not hydra_app(entry):
        result = run_cli(entry, *args, cwd=tmp_path)
    else:
        short = [*TINY_VIT, *SHORT] if entry == "src.train" and "--" not in command else []
        if any(
            a.startswith(("model=", "model.")) for a in args
        ):  # the README's own model: only the run is shortened
            short = SHORT
        if (
            entry == "src.train" and "ckpt_path=" in command
        ):  # resume a copy of the tiny run, with its overrides
            copy = tmp_path / "train" / "runs" / "x" / "checkpoints" / "last.ckpt"
            copy.parent.mkdir(parents=True)
            shutil.copy(places["ckpt"], copy)
            args = [
                f"ckpt_path={copy}" if a.startswith("ckpt_path=") and a != "ckpt_path=last" else a
                for a in args
            ]
            short = ["data=digits", *TINY_VIT, *SHORT, "trainer.max_epochs=3"]
        result = run_cli(entry, *args, *short, f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, f"{how}: {entry} {' '.join(args)}\n{result.stderr[-3000:]}"
