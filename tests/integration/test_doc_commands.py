"""Every command shown in README.md, config/README.md and docs/*.md runs (issue 14).

The commands are the lines of the fenced shell blocks (```bash, ```sh) of those files,
read from the files themselves, so a command added to the docs is run here too, and a
command no rule below knows how to run fails this test. Each file's commands run in
order in a scratch checkout (symlinks to this one; `config/`, `profiles/` and `docs/`
copied, so that commands that write there leave the project alone): a `cp` or an `export`
affects the commands after it, and a ```yaml block whose first line is `# PATH` is
written to PATH there, as a user would create the file before the commands that use it.

How a command runs (printed, with a count per kind, at the end of the module):

- real: as written (after `--from DIR`: the local copy of the data set when DIR is
  absent; `python3 -m venv` in an empty folder, without pip);
- real, shortened: fewer epochs, rounds or steps than written (training and benchmarks);
- real, on placeholder outputs: `snakemake --report`, whose inputs are the tables and
  figures of a finished run (a real run's report: test_workflow.py's tiny workflow);
- dry run: Snakemake with `-n` added, where the command would train for long; with a
  SLURM profile also an sbatch check: every training job's `sbatch` line built by the
  installed SLURM plugin (tests/workflow/test_cost.py) has the GPUs, CPUs, node, account and
  partition the docs promise, and no `--ntasks-per-gpu`;
- real, from this checkout: `git clone URL DIR` clones this checkout into a scratch folder
  (the repository's address is a placeholder in the docs); `cd DIR` after it is noted,
  and the commands after it run in the scratch checkout, whose files are this checkout's;
- make -n: a `make` target that trains or runs this suite: its recipe is printed, and a
  Snakemake command in it is then dry-run;
- pip dry run: `pip install --dry-run` offline into the project's venv, which resolves
  the package's metadata and every extra the command names;
- skipped, with the reason printed (conda, which is not installed here).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, _sbatch_line, _train_resources

DOCS = ["README.md", "config/README.md", *sorted(p.relative_to(ROOT).as_posix()
                                                for p in (ROOT / "docs").glob("*.md"))]  # fmt: skip
SHELL = {"bash", "sh", "shell", "console"}
VENV_BIN = ROOT / ".venv" / "bin"
SHARED_DATA = ROOT.parent / "shared" / "data"  # the real MNIST / Fashion-MNIST, read-only
# Entries of the checkout a command may write into: copied, not linked.
COPIED = {"config", "profiles", "docs"}
NOT_LINKED = {".git", ".snakemake", "results", "figures", "logs", "resources", "build",
              "dist", ".pytest_cache", ".ruff_cache", "report.html", *COPIED}  # fmt: skip
# What a shortened run keeps of a flag's value.
SHORTER = {"--epochs": "1", "--repeats": "1", "--rounds": "1", "--steps": "3"}
# config/README.md's example of an override file beside `--config preset=NAME`.
EXAMPLE_OVERRIDE = "defaults: {seeds: [0]}\n"
TIMEOUT = 600


@dataclass
class Command:
    doc: str
    line: int
    text: str
    how: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Block:
    line: int
    lang: str
    text: str


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented ones too), indentation removed."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = re.match(r"^(\s*)(```|~~~)\s*([\w+-]*)\s*$", line)
        if current is None and fence:
            current = (number, fence[3].lower(), len(fence[1]), [])
        elif current is not None and fence and not fence[3]:
            blocks.append(Block(current[0], current[1], "\n".join(current[3])))
            current = None
        elif current is not None:
            current[3].append(line[current[2] :] if line[: current[2]].strip() == "" else line)
    assert current is None, f"{path}: unclosed code block at line {current[0]}"
    return blocks


def block_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, words) of each command of a shell block: continuation lines joined, comments
    dropped, `a && b` split into two commands."""
    commands, pending, start = [], "", None
    for offset, line in enumerate(block.text.splitlines(), start=1):
        if start is None:
            start = block.line + offset
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = shlex.split(pending, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if current:
                    commands.append((start, current))
                current = []
            else:
                current.append(word)
        pending, start = "", None
    return commands


class Checkout:
    """A scratch copy of the project a doc's commands run in, with their environment."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir()
        for entry in ROOT.iterdir():
            if entry.name in COPIED:
                shutil.copytree(entry, path / entry.name)
            elif entry.name not in NOT_LINKED:
                (path / entry.name).symlink_to(entry)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in {"RBD_DATA_DIR", "PYTHONPATH", "SNAKEMAKE_PROFILE"}}  # fmt: skip
        self.env["PATH"] = f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}"

    def run(self, words, cwd=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(w) for w in words], cwd=cwd or self.path, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


def _ok(proc: subprocess.CompletedProcess, cmd: Command) -> str:
    assert proc.returncode == 0, (
        f"{cmd.doc}:{cmd.line}: `{cmd.text}` failed (rc {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout + proc.stderr


def _flag_values(words: list[str], *flags: str) -> list[str]:
    """The values of options like `--profile X` / `--profile=X`, in order."""
    values = []
    for i, word in enumerate(words):
        for flag in flags:
            if word == flag and i + 1 < len(words):
                values.append(words[i + 1])
            elif word.startswith(flag + "="):
                values.append(word.split("=", 1)[1])
    return values


def _profile_yaml(checkout: Checkout, name: str) -> dict:
    path = checkout.path / name
    path = path / "config.yaml" if path.is_dir() else path
    assert path.is_file(), f"profile {name} not found in the checkout"
    return yaml.safe_load(path.read_text()) or {}


def _config_overrides(words: list[str]) -> dict[str, str]:
    """`--config k=v ...` of a Snakemake command."""
    if "--config" not in words:
        return {}
    found = {}
    for word in words[words.index("--config") + 1 :]:
        if word.startswith("-") or "=" not in word:
            break
        key, value = word.split("=", 1)
        found[key] = value
    return found


def check_sbatch_lines(cmd: Command, words: list[str], profiles: list[dict], out: str):
    """The sbatch line of every planned training job, as the installed plugin builds it."""
    jobs = _train_resources(out)
    assert jobs, f"{cmd.doc}:{cmd.line}: the dry run planned no training job"
    train_set = {}
    for profile in profiles:
        train_set |= (profile.get("set-resources") or {}).get("train") or {}
    wanted = {}  # what the given profiles ask of every training job
    for profile in profiles:
        for key, value in (profile.get("default-resources") or {}).items():
            if key in ("slurm_account", "slurm_partition"):
                wanted[key] = str(train_set.get(key, value))
    for key in ("slurm_account", "slurm_partition"):
        if key in train_set:
            wanted[key] = str(train_set[key])
    gpu = _config_overrides(words).get("device", "").startswith("cuda")
    examples = {}
    for run, res in jobs.items():
        line = _sbatch_line(res, int(res["threads"]))
        where = f"{cmd.doc}:{cmd.line}: {run}: {line}"
        assert "--ntasks-per-gpu" not in line and "--nodes=1" in line, where
        assert f"--cpus-per-task={res.get('cpus_per_task', res['threads'])}" in line, where
        if gpu:
            model = f"{train_set['gpu_model']}:" if "gpu_model" in train_set else ""
            assert re.search(rf"--gpus={model}\d+\b", line), where
            examples.setdefault(f"{res['gpu']}-GPU job", line)
        else:
            assert "--ntasks=1" in line and "gpu" not in line, where
            examples.setdefault("CPU job", line)
        if "slurm_account" in wanted:
            assert f" -A {wanted['slurm_account']} " in line + " ", where
        if "slurm_partition" in wanted:
            assert f" -p {wanted['slurm_partition']} " in line + " ", where
    cmd.notes += [f"{kind}: {line}" for kind, line in sorted(examples.items())]
    return len(jobs)


def run_snakemake(checkout: Checkout, cmd: Command, words: list[str], via: str = ""):
    args = words[1:]
    if "--configfile=more.yaml" in args and not (checkout.path / "more.yaml").exists():
        (checkout.path / "more.yaml").write_text(EXAMPLE_OVERRIDE)
        cmd.notes.append(f"more.yaml: config/README.md's example {EXAMPLE_OVERRIDE.strip()!r}")
    if "--report" in args or any(a.startswith("--report=") for a in args):
        # The report collects a finished run's tables and figures: stand-ins for them.
        rest = [a for i, a in enumerate(args) if not a.startswith("--report")
                and not (i and args[i - 1] == "--report")]  # fmt: skip
        summary = checkout.run([words[0], "--summary", *rest]).stdout
        made = 0
        for row in summary.splitlines()[1:]:
            name = row.split("\t")[0]
            if name.startswith(("figures/", "results/tables/")):
                target = checkout.path / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("placeholder\n")
                made += 1
        assert made, summary
        _ok(checkout.run(words), cmd)
        cmd.how = "real, on placeholder outputs"
        cmd.notes.append(f"{made} placeholder tables and figures")
        return
    dry = {"-n", "--dry-run", "--dryrun", "--lint", "--list-rules", "--summary", "--rulegraph",
           "--dag"} & set(args)  # fmt: skip
    run = words if dry else [words[0], "-n", *args]
    out = _ok(checkout.run(run), cmd)
    graph = {"--rulegraph", "--dag"} & set(args)
    assert ("Job stats" in out or "Nothing to be done" in out or "--lint" in args
            or (graph and ("flowchart" in out or "digraph" in out))), out[-2000:]  # fmt: skip
    cmd.how = (via + " + " if via else "") + ("real (a dry run as written)" if dry else "dry run")
    names = _flag_values(args, "--profile", "--workflow-profile")
    profiles = [_profile_yaml(checkout, name) for name in names]
    if any(p.get("executor") == "slurm" for p in profiles):
        n = check_sbatch_lines(cmd, args, profiles, out)
        cmd.how += " + sbatch check"
        cmd.notes.insert(0, f"sbatch lines of {n} training jobs checked")
    data_dir = checkout.env.get("RBD_DATA_DIR")
    if data_dir and "download_data" in out:
        assert f"{data_dir}/.rbd/" in out, out[-2000:]


def run_make(checkout: Checkout, cmd: Command, words: list[str]):
    printed = _ok(checkout.run(["make", "-n", *words[1:]]), cmd)
    cmd.how = "make -n"
    for line in printed.replace("\\\n", " ").splitlines():
        parts = shlex.split(line) if re.match(r"\s*\S*/snakemake\s", line) else []
        if parts:
            run_snakemake(checkout, cmd, parts, via="make -n")
            cmd.notes.append(f"its Snakemake command: {line.strip()}")
    if "test" in words[1:]:
        assert "pytest" in printed, printed
        cmd.notes.append("the recipe runs pytest; not run here (this suite would recurse)")


def run_pip(checkout: Checkout, cmd: Command, words: list[str]):
    assert words[1] == "install", words
    proc = checkout.run(
        [VENV_BIN / "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
         *words[2:]], cwd=ROOT,
    )  # fmt: skip
    out = _ok(proc, cmd)
    assert "does not provide the extra" not in out, out
    assert "Would install" in out, out[-2000:]
    cmd.how = "pip dry run"
    cmd.notes.append("offline, into the project's venv: metadata and extras resolve")


def run_rbd(checkout: Checkout, cmd: Command, words: list[str]):
    words = list(words)
    cmd.how = "real"
    if len(words) > 1 and words[1] == "download" and "--from" in words:
        i = words.index("--from") + 1
        if not Path(words[i]).is_dir():
            dataset = words[words.index("--dataset") + 1]
            local = SHARED_DATA / dataset.replace("_", "-")
            if not local.is_dir():
                cmd.how = f"skipped: {words[i]} and {local} are both absent"
                return
            cmd.notes.append(f"--from {local} ({words[i]} is absent here)")
            words[i] = str(local)
    shorten(words, cmd)
    _ok(checkout.run(words), cmd)
    if len(words) > 1 and words[1] == "train":
        out = checkout.path / words[words.index("--out") + 1]
        assert (out / "run.json").is_file() and (out / "metrics.csv").is_file()


def shorten(words: list[str], cmd: Command) -> None:
    for i, word in enumerate(words[:-1]):
        if word in SHORTER and words[i + 1] != SHORTER[word]:
            was = "its default" if words[i + 1] == "many" else words[i + 1]
            cmd.notes.append(f"{word} {was} -> {SHORTER[word]}")
            words[i + 1] = SHORTER[word]
            cmd.how = "real, shortened"


def run_python(checkout: Checkout, cmd: Command, words: list[str]):
    if words[1:3] == ["-m", "venv"]:
        empty = checkout.path.parent / f"venv-{cmd.line}"
        empty.mkdir()
        _ok(checkout.run([*words, "--without-pip"], cwd=empty), cmd)
        cmd.how = "real"
        cmd.notes.append("in an empty folder, --without-pip (pip install is checked apart)")
        return
    words = list(words)
    cmd.how = "real"
    if Path(words[1]).name == "same_outputs.py" and "record" in words:
        tree = words.index("--tree") + 1
        if not (checkout.path / words[tree]).exists():
            cmd.notes.append(f"--tree {words[tree]} -> this checkout")
            words[tree] = "."
        if "--cases" not in words:
            words += ["--cases", "sgd", "rbd-gaussian"]
            cmd.notes.append("2 of the runs (sgd, rbd-gaussian killed and resumed)")
            cmd.how = "real, shortened"
    if "--memory" in words and "--size" not in words:
        words += ["--size", "100000"]
        cmd.notes.append("--memory at D = 10^5 instead of 10^6")
        cmd.how = "real, shortened"
    # a benchmark's own defaults of the flags that set its length, shortened too
    usage = _ok(checkout.run([*words[:2], "--help"]), cmd)
    for flag in SHORTER:
        if flag not in words and re.search(rf"{flag}\b", usage):
            words += [flag, "many"]
    shorten(words, cmd)
    _ok(checkout.run(words), cmd)


def run_git(checkout: Checkout, cmd: Command, words: list[str]):
    if words[1:2] != ["clone"] or len(words) != 4:
        pytest.fail(f"{cmd.doc}:{cmd.line}: only `git clone URL DIR` is run here: {cmd.text}")
    if not (ROOT / ".git").exists():
        cmd.how = "skipped: this checkout is not a git repository, so there is nothing to clone"
        return
    clone = checkout.path.parent / f"clone-{cmd.line}"
    _ok(checkout.run(["git", "clone", "--quiet", ROOT, clone]), cmd)
    assert (clone / "Makefile").is_file() and (clone / "README.md").is_file(), clone
    cmd.how = "real, from this checkout"
    cmd.notes.append(f"{words[2]} -> {ROOT}: the clone has the Makefile and README.md")


def run_command(checkout: Checkout, cmd: Command, words: list[str]):
    program = Path(words[0]).name
    if any(w in {"|", "||", ";", ">", ">>", "<", "<<"} for w in words):
        pytest.fail(f"{cmd.doc}:{cmd.line}: shell syntax this test cannot run: {cmd.text}")
    if words[0] == "export":
        for assignment in words[1:]:
            key, value = assignment.split("=", 1)
            checkout.env[key] = value
        cmd.how = "real"
        cmd.notes.append("sets the environment of the commands after it")
    elif program == "git":
        run_git(checkout, cmd, words)
    elif words[0] == "cd":
        cmd.how = "real, from this checkout"
        cmd.notes.append("the commands after it run in the scratch copy of this checkout")
    elif program in {"cp", "mkdir"}:
        _ok(checkout.run(words), cmd)
        cmd.how = "real"
    elif program == "make":
        run_make(checkout, cmd, words)
    elif program in {"pip", "pip3"}:
        run_pip(checkout, cmd, words)
    elif program == "conda":
        cmd.how = ("skipped: conda is not installed here (environment.yml is checked by "
                   "tests/contracts/test_packaging.py)")  # fmt: skip
        if shutil.which("conda"):
            cmd.how = "skipped: creating a conda environment downloads gigabytes"
    elif program == "snakemake":
        run_snakemake(checkout, cmd, words)
    elif program == "rbd":
        run_rbd(checkout, cmd, words)
    elif re.fullmatch(r"python3?(\.\d+)?", program):
        run_python(checkout, cmd, words)
    elif program == "torchrun":
        _ok(checkout.run(words), cmd)
        cmd.how = "real"
    else:
        pytest.fail(
            f"{cmd.doc}:{cmd.line}: no rule in tests/integration/test_doc_commands.py "
            f"runs `{cmd.text}`"
        )


RAN: dict[str, list[Command]] = {}
NOT_COMMANDS: dict[str, list[str]] = {}


def doc_plan(doc: str) -> list[tuple[Block, list[tuple[int, list[str]]]]]:
    return [(block, block_commands(block) if block.lang in SHELL else [])
            for block in fenced_blocks(ROOT / doc)]  # fmt: skip


def test_the_docs_show_commands_to_run():
    """The extraction finds the commands (a broken reader must not pass by finding none)."""
    found = {doc: sum(len(c) for _, c in doc_plan(doc)) for doc in DOCS}
    assert found["README.md"] >= 10 and found["docs/cluster.md"] >= 3, found
    assert found["config/README.md"] >= 1, found
    assert found["docs/data.md"] >= 2 and found["docs/development.md"] >= 3, found


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_runs(doc, tmp_path, capsys):
    checkout = Checkout(tmp_path / "checkout")
    done = RAN.setdefault(doc, [])
    failed = []
    for block, commands in doc_plan(doc):
        first = block.text.splitlines()[0] if block.text else ""
        if block.lang == "yaml" and re.match(r"#\s*\S+\.ya?ml$", first):
            path = checkout.path / first.lstrip("#").strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text + "\n")
            yaml.safe_load(block.text)
            NOT_COMMANDS.setdefault(doc, []).append(
                f"{doc}:{block.line} ```yaml: written to {path.relative_to(checkout.path)}"
            )
            continue
        if block.lang not in SHELL:
            NOT_COMMANDS.setdefault(doc, []).append(
                f"{doc}:{block.line} ```{block.lang or '(no language)'}: not a command"
            )
            continue
        for line, words in commands:
            cmd = Command(doc, line, shlex.join(words))
            start = time.monotonic()
            try:  # a broken command is reported with the others, after all have run
                run_command(checkout, cmd, words)
                assert cmd.how, cmd
            except (AssertionError, pytest.fail.Exception, subprocess.TimeoutExpired) as err:
                cmd.how = "FAILED"
                failed.append(f"{doc}:{line}: `{cmd.text}`:\n{err}")
            cmd.seconds = time.monotonic() - start
            done.append(cmd)
    with capsys.disabled():
        print(f"\n{doc}: {len(done)} commands")
        for cmd in done:
            print(f"  {cmd.doc}:{cmd.line} [{cmd.how}, {cmd.seconds:.0f} s] {cmd.text}")
            for note in cmd.notes:
                print(f"      {note}")
    assert not failed, "\n\n".join(failed)


@pytest.mark.slow
def test_listing_of_documented_commands(capsys):
    """How many documented commands ran, and how (after the tests above)."""
    commands = [cmd for doc in DOCS for cmd in RAN.get(doc, [])]
    if not commands:
        pytest.skip("the per-document tests did not run in this session (deselected)")
    kinds: dict[str, int] = {}
    for cmd in commands:
        kind = cmd.how.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    skipped = [cmd for cmd in commands if cmd.how.startswith("skipped")]
    with capsys.disabled():
        print(f"\ndocumented commands: {len(commands)} in {', '.join(RAN)}")
        for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {n:3d}  {kind}")
        for cmd in skipped:
            print(f"  skipped {cmd.doc}:{cmd.line} `{cmd.text}`: {cmd.how.split(': ', 1)[1]}")
        blocks = [text for doc in DOCS for text in NOT_COMMANDS.get(doc, [])]
        print(f"  other code blocks ({len(blocks)}): " + "; ".join(blocks))
    assert all(": " in cmd.how for cmd in skipped)  # every skip names its reason
    # Only the conda lines, the local-data install where ../shared/data is absent (a clone
    # without the verification data skips it, with the reason printed), and `git clone`
    # where the project is not a git checkout.
    allowed = [c for c in skipped if c.text.startswith("conda ") or "both absent" in c.how
               or "not a git repository" in c.how]  # fmt: skip
    assert allowed == skipped, [c.text for c in skipped]
