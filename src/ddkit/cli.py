"""The ``ddkit`` command: a thin layer over the public API.

Every ``DDKitError`` (bad input) is printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table

from ddkit.errors import ConfigError, DDKitError

try:  # typer ≥ 0.20 vendors click
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as _click_errors

_NO_ARGS_IS_HELP = getattr(_click_errors, "NoArgsIsHelpError", ())  # click ≥ 8.2; older ones exit(0) instead
out = Console()
err = Console(stderr=True)


class _OneLineErrors(typer.core.TyperGroup):
    """The command group: a usage error (unknown option, a value of the wrong type, a
    missing argument) is one line on stderr and exit code 2, like every other bad input,
    instead of click's usage box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as exc:
            out.print(exc.ctx.get_help() if exc.ctx is not None else "ddkit --help", highlight=False)
            sys.exit(0)
        except _click_errors.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "ddkit"
            msg = " ".join(exc.format_message().split())
            err.print(f"[bold red]error:[/] {where}: {msg} (see {where} --help)", markup=True, highlight=False,
                      soft_wrap=True)
            sys.exit(2)
        except _click_errors.ClickException as exc:
            err.print(f"[bold red]error:[/] {' '.join(exc.format_message().split())}", markup=True,
                      highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="ddkit: dataset distillation, evaluation and audit.")


class RunKeys(BaseModel):
    """The run keys a ``--config`` file may hold besides method settings (strictly typed)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dataset: str | None = None
    method: str | None = None
    ipc: int | None = Field(None, ge=1)
    iterations: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0)


RUN_KEYS = set(RunKeys.model_fields)
_RUN_KEY_RULES = {"ipc": "IPC must be an integer ≥ 1", "iterations": "iterations must be an integer ≥ 0",
                  "seed": "seed must be an integer ≥ 0", "dataset": "the dataset must be a name",
                  "method": "the method must be a name"}


def _run_keys(values: dict[str, Any], source: str) -> RunKeys:
    try:
        return RunKeys(**values)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            rule = _RUN_KEY_RULES.get(key, e["msg"]) if e["type"] != "extra_forbidden" else "is not a run key"
            problems.append(f"{key}: {rule}, got {e.get('input')!r}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def _methods_help() -> str:
    from ddkit.distill import list_methods

    return "One of: " + ", ".join(list_methods()) + " (mtt needs --set buffer=DIR)."


_METHODS_HELP = _methods_help()


def _cli_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DDKitError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = raw
    return values


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {str(path)!r} must be a mapping of settings")
    return data


@app.command()
@_cli_errors
def datasets(data_root: Annotated[Path | None, typer.Option(help="Folder searched first.")] = None):
    """List the registered datasets, where each was found, or how to get it."""
    from ddkit.data import DATASETS, dataset_status

    table = Table(title="ddkit datasets")
    for col in ("name", "shape", "classes", "found at", "how to get it"):
        table.add_column(col)
    for name, info in DATASETS.items():
        where, how = dataset_status(name, data_root)
        table.add_row(name, f"{info.channels}×{info.image_size}×{info.image_size}", str(info.num_classes),
                      where or "[red]not found[/]", how)
    table.add_row("imagefolder:PATH", "any", "any", "PATH", "PATH/train/<class>/*, PATH/test/<class>/*")
    from ddkit.data.biased import FAMILIES

    for family, (base, _) in FAMILIES.items():
        info = DATASETS[base]
        where, how = dataset_status(base, data_root)
        table.add_row(f"{family}:rho=R,severity=S", f"3×{info.image_size}×{info.image_size}", str(info.num_classes),
                      (f"built from {where}" if where else "[red]not found[/]"), f"built from {base}: {how}")
    out.print(table)


@app.command()
@_cli_errors
def distill(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset name (see `ddkit datasets`).")] = None,
    method: Annotated[str | None, typer.Option(help=_METHODS_HELP)] = None,
    ipc: Annotated[int | None, typer.Option(help="Images per class.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Override the method's iteration budget.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 0).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    config: Annotated[Path | None, typer.Option(help="YAML file of settings (method settings and "
                                                     "dataset/method/ipc/iterations/seed).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override one method setting: key=value.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT.ckpt if it exists.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the data.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
    audit_split: Annotated[int | None, typer.Option(help="Distil from the seeded half of the training set (the "
                                                         "membership-inference audit's members).")] = None,
    debias: Annotated[str | None, typer.Option(help="Reweight the real images of a biased dataset: kde (1/kernel "
                                                    "density of the embedding per class, no attribute labels) or "
                                                    "oracle (inverse attribute frequency: an upper bound). "
                                                    "dm, dc, dsa.")] = None,
):
    """Distil a dataset and write the distilled set (checkpoints go to OUT.ckpt).

    The output is locked for the run: a second run to the same --out is refused.
    """
    import ddkit
    from ddkit.utils import output_lock

    settings = _read_config(config)
    run = _run_keys({k: settings.pop(k) for k in list(settings) if k in RUN_KEYS}, f"config {str(config)!r}")
    settings.update(_parse_sets(set_ or []))
    given = _run_keys({k: v for k, v in {"ipc": ipc, "iterations": iterations, "seed": seed}.items() if v is not None},
                      "options")
    dataset = dataset or run.dataset or "fashion-mnist"
    method = method or run.method or "dm"
    ipc = given.ipc or run.ipc or 10
    iterations = given.iterations if given.iterations is not None else run.iterations
    seed = given.seed if given.seed is not None else (run.seed or 0)
    ckpt = out_file.with_name(out_file.name + ".ckpt")
    # validate method and settings before the (slow) data load
    from ddkit.distill import get_method, make_config

    make_config(get_method(method), {**settings, **({"iterations": iterations} if iterations is not None else {})})
    with output_lock(out_file, suffixes=(".ckpt",)):
        real = ddkit.load_dataset(dataset, "train", data_root=data_root, download=download)
        result = ddkit.distill(real, method, ipc, iterations=iterations, config=settings, seed=seed,
                               device=device, checkpoint=ckpt, resume=resume, progress=not quiet,
                               audit_split=audit_split, debias=debias)
        result.save(out_file)
        if ckpt.exists():
            ckpt.unlink()
    out.print(f"wrote {out_file} ({result.images.shape[0]} images, {method}, IPC {ipc}, {dataset})")


@app.command()
@_cli_errors
def buffer(
    dataset: Annotated[str, typer.Argument(help="Dataset name (see `ddkit datasets`).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Buffer folder (created; re-run to resume).")],
    experts: Annotated[int, typer.Option(help="Expert trajectories (MTT paper: 100).")] = 10,
    epochs: Annotated[int, typer.Option(help="Epochs per expert (MTT: 50).")] = 50,
    model: Annotated[str, typer.Option(help="Expert network (zoo name).")] = "convnet",
    lr: Annotated[float, typer.Option(help="SGD learning rate of the experts (MTT: 0.01).")] = 0.01,
    batch_size: Annotated[int, typer.Option(help="Real images per SGD step (MTT: 256).")] = 256,
    dsa: Annotated[bool, typer.Option("--dsa/--no-dsa", help="DSA augmentation of the real batches.")] = True,
    train_subset: Annotated[int | None, typer.Option(help="Images per class to train on (default: all, "
                                                          "as in MTT).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the data.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
):
    """Train MTT expert trajectories: per expert, its parameters after every epoch (`--method mtt` needs them)."""
    import ddkit
    from ddkit.distill.buffer import train_experts
    from ddkit.utils import output_lock

    with output_lock(out_dir / "manifest.json"):
        real = ddkit.load_dataset(dataset, "train", data_root=data_root, download=download)
        buf = train_experts(real, out_dir, experts=experts, epochs=epochs, model=model, lr=lr,
                            batch_size=batch_size, dsa=dsa, train_subset=train_subset, seed=seed, device=device,
                            progress=not quiet)
    out.print(f"{out_dir}: {len(buf)} finished expert trajectories × {buf.epochs} epochs ({buf.model}, {dataset})")


@app.command()
@_cli_errors
def evaluate(
    file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    model: Annotated[str | None, typer.Option(help="Evaluation network (zoo name; default: the protocol's, "
                                                   "convnet for dsa/dc/soft).")] = None,
    runs: Annotated[int, typer.Option(help="Networks trained from scratch.")] = 5,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the protocol's: dsa 1000, dc 300, soft 1000; "
                                                    "frepo/kip: optimiser steps).")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment",
                                          help="The protocol's augmentation (dsa: DSA; soft: crop, flip, CutMix); "
                                               "off: none.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the first network.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the test set.")] = None,
    quiet: Annotated[bool, typer.Option(help="No per-run lines.")] = False,
    protocol: Annotated[str, typer.Option(help="auto (the protocol of the set's method's paper), dsa (= hard: "
                                               "DSA/DM/MTT), dc, frepo, kip (RFAD finite nets), soft (RDED/CFM: "
                                               "a teacher's online soft labels).")] = "auto",
    teacher: Annotated[Path | None, typer.Option(help="Teacher for the soft protocol: a teacher file or a set "
                                                      "that ships one (default: the set's own).")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
    models: Annotated[str | None, typer.Option(help="Comma-separated architectures (e.g. convnet,mlp,lenet,alexnet,"
                                                    "vgg11,resnet18,resnet18-bn): a cross-architecture table "
                                                    "instead of one --model.")] = None,
    baseline: Annotated[str, typer.Option(help="With --models: 'random' (a random real subset of the same IPC, "
                                               "evaluated the same way) or 'none'.")] = "random",
    plot: Annotated[Path | None, typer.Option(help="With --models: write a bar chart PNG.")] = None,
    elf: Annotated[bool, typer.Option(help="Train with ELF: a feature teacher's features of the distilled images "
                                           "(with --models: beside the plain result).")] = False,
    elf_teacher: Annotated[str, typer.Option(help="ELF feature teacher (authors: convnet-w512; default width 128 "
                                                  "for CPUs).")] = "convnet",
    elf_teacher_epochs: Annotated[int, typer.Option(help="ELF teacher epochs (authors: 100).")] = 10,
    elf_teacher_subset: Annotated[int, typer.Option(help="ELF teacher images per class, 0 = all (authors: "
                                                         "all).")] = 500,
    elf_loss: Annotated[str, typer.Option(help="ELF feature loss: ce (authors), mse, l1, cosine.")] = "ce",
    elf_mode: Annotated[str, typer.Option(help="ELF terms: front_rear_task (authors), front_task, rear_task, "
                                               "task.")] = "front_rear_task",
    pubkey: Annotated[Path | None, typer.Option(help="Require a valid signature by this public key "
                                                     "(ddkit keygen/sign).")] = None,
    bias: Annotated[bool | None, typer.Option("--bias/--no-bias", help="Bias metrics (unbiased, bias-aligned, "
                                                                       "bias-conflicting accuracy); default: "
                                                                       "whenever the dataset has attributes.")] = None,
    bias_rho: Annotated[float, typer.Option(help="rho of the test split for the aligned/conflicting "
                                                 "accuracies.")] = 0.5,
    compile: Annotated[str, typer.Option(help="torch.compile each network's training: auto (from 500 "
                                              "optimiser steps, when a compiler is present), on or off.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32 (the papers') or bf16: each training step's forward and "
                                                "loss under bf16 autocast; not exact, pays only with bf16 units "
                                                "(Intel AMX, avx512_bf16, CUDA).")] = "fp32",
):
    """Train fresh networks on a distilled set; print the test accuracy mean ± std."""
    import ddkit
    from ddkit.utils import check_writable

    modes = {"auto": "auto", "on": True, "off": False}
    if compile not in modes:
        raise ConfigError(f"--compile must be auto, on or off, not {compile!r}")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision must be fp32 or bf16, not {precision!r}")
    for path in (json_out, plot):
        if path is not None:
            check_writable(path)
    elf_cfg = None
    if elf:
        from pydantic import ValidationError as _VE

        from ddkit.evaluate.elf import ELFConfig

        try:
            elf_cfg = ELFConfig(teacher_model=elf_teacher, teacher_epochs=elf_teacher_epochs,
                                teacher_subset=elf_teacher_subset or None, feature_loss=elf_loss, mode=elf_mode,
                                seed=seed)
        except _VE as exc:
            raise ConfigError("ELF settings: " + "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) \
                from None
    if pubkey is not None:
        from ddkit.artifact import DistilledSet

        file = DistilledSet.load(file, public_key=pubkey)
    if models is not None:
        _cross_architecture(file, models.split(","), baseline=baseline, runs=runs, epochs=epochs, augment=augment,
                            device=device, seed=seed, data_root=data_root, download=download, protocol=protocol,
                            quiet=quiet, json_out=json_out, plot=plot, elf=elf_cfg, compile=modes[compile],
                            precision=precision)
        return
    if plot is not None:
        raise ConfigError("--plot draws the cross-architecture table: give --models")
    result = ddkit.evaluate(file, model=model, runs=runs, epochs=epochs, augment=augment, device=device,
                            seed=seed, data_root=data_root, progress=not quiet, protocol=protocol, teacher=teacher,
                            download=download, elf=elf_cfg, bias=bias, bias_rho=bias_rho, compile=modes[compile],
                            precision=precision)
    if _rank() != 0:  # under torchrun: rank 0 reports for all
        return
    out.print(f"{result.method} IPC {result.ipc} on {result.dataset}, {result.model}, {runs} runs × "
              f"{result.epochs} epochs: test accuracy {result.summary()}")
    if result.bias:
        b = result.bias

        def pct(key: str) -> str:
            return "n/a" if b[key] is None else f"{100 * b[key]:.2f} ± {100 * b[key + '_std']:.2f} %"

        split = "test split" if b["split_rho"] is None else f"rho={b['split_rho']:g} split"
        out.print(f"bias: unbiased (rho=0) {pct('unbiased')}; {split}: aligned {pct('aligned')}, conflicting "
                  f"{pct('conflicting')}", highlight=False)
    out.print(f"protocol: {result.protocol}", highlight=False)
    if json_out is not None:
        result.save(json_out)


def _rank() -> int:
    from ddkit.evaluate.parallel import world

    return world()[0]


def _cross_architecture(file: Path, models: list[str], *, baseline: str, json_out: Path | None, plot: Path | None,
                        quiet: bool, **kw) -> None:
    from ddkit.evaluate.cross import evaluate_models

    res = evaluate_models(file, models, baseline=baseline, progress=not quiet, **kw)
    if _rank() != 0:  # under torchrun: rank 0 reports for all
        return
    table = Table(title=f"{res.method} IPC {res.ipc} on {res.dataset}: test accuracy (%), "
                        f"{res.rows[0]['distilled']['runs']} runs × {res.rows[0]['distilled']['epochs']} epochs")
    for col in res.columns():
        table.add_column(col)
    for row in res.table():
        table.add_row(*row)
    out.print(table)
    for r in res.rows:
        out.print(f"{r['model']}: {(r['elf'] or r['distilled'])['protocol']}", highlight=False)
    if json_out is not None:
        res.save(json_out)
    if plot is not None:
        res.plot(plot)


@app.command("import")
@_cli_errors
def import_(
    path: Annotated[Path, typer.Argument(help="The other tool's file (dc, npz) or folder (mtt, imagefolder).")],
    fmt: Annotated[str, typer.Option("--from", help="dc (res_*.pt), mtt (images_best.pt folder), npz (KIP/FRePo), "
                                                    "imagefolder (PATH/<class>/*.png).")],
    dataset: Annotated[str, typer.Option(help="The dataset the set was distilled from.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")],
    exp: Annotated[int, typer.Option(help="dc: the experiment to take (0-based).")] = 0,
    zca: Annotated[bool, typer.Option(help="mtt: the images are in MTT's ZCA space (--zca): invert it.")] = False,
    label_kind: Annotated[str | None, typer.Option(help="What N×K labels are: probabilities or regression.")] = None,
    method: Annotated[str | None, typer.Option(help="Method name to record (default: from the file).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the data.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
):
    """Convert another tool's distilled set into a ddkit set (never runs code from the file)."""
    from ddkit.interop import import_set
    from ddkit.utils import check_writable

    check_writable(out_file)
    ds = import_set(fmt, path, dataset, exp=exp, zca=zca, label_kind=label_kind, method=method,
                    data_root=data_root, download=download)
    ds.save(out_file)
    info = ds.extra["import"]
    out.print(f"wrote {out_file} ({ds.images.shape[0]} images, {ds.label_kind} labels, from {fmt}; "
              f"{100 * info['pixel_overflow']:.2f} % of pixel values outside [0, 1], kept)")


@app.command()
@_cli_errors
def export(
    file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    fmt: Annotated[str, typer.Option("--to", help="pt (images.pt/labels.pt/lr.pt, standardised) or imagefolder "
                                                  "(PNG per image, one folder per class).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write into (created).")],
    pubkey: Annotated[Path | None, typer.Option(help="Require a valid signature by this public key "
                                                     "(ddkit keygen/sign).")] = None,
):
    """Write a distilled set in a format other tools read."""
    from ddkit.artifact import DistilledSet
    from ddkit.interop import export_set

    files = export_set(DistilledSet.load(file, public_key=pubkey), fmt, out_dir)
    out.print(f"wrote {len(files)} files under {out_dir}")


@app.command()
@_cli_errors
def show(
    file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")],
    max_per_class: Annotated[int, typer.Option(help="At most this many images per row.")] = 20,
    pubkey: Annotated[Path | None, typer.Option(help="Require a valid signature by this public key "
                                                     "(ddkit keygen/sign).")] = None,
):
    """Draw the images of a distilled set as a PNG grid, one row per class."""
    from ddkit.artifact import DistilledSet
    from ddkit.report import save_grid

    save_grid(DistilledSet.load(file, public_key=pubkey), out_file, max_per_class=max_per_class)
    out.print(f"wrote {out_file}")


@app.command()
@_cli_errors
def info(file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    pubkey: Annotated[Path | None, typer.Option(help="Require a valid signature by this public key "
                                                     "(ddkit keygen/sign).")] = None,
):
    """Print a distilled set's metadata as JSON (after verifying its hash)."""
    from ddkit import io
    from ddkit.artifact import FORMAT, FORMAT_V1, DistilledSet

    ds = DistilledSet.load(file, public_key=pubkey)
    meta = {"format": io.read_header(file, (FORMAT, FORMAT_V1), what="distilled set")["format"], **ds._meta()}
    meta["images"] = list(ds.images.shape)
    meta["labels"] = list(ds.labels.shape)
    sys.stdout.write(json.dumps(meta, indent=2) + "\n")


@app.command()
@_cli_errors
def spectrum(
    files: Annotated[list[Path], typer.Argument(help="One or more distilled sets of the same dataset.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for spectrum.json and spectrum.png.")],
    real: Annotated[str | None, typer.Option(help="Real dataset (default: the sets' source dataset).")] = None,
    model: Annotated[str, typer.Option(help="Feature map: a zoo network, randomly initialised.")] = "convnet",
    n_real: Annotated[int, typer.Option(help="Real images used (class-balanced).")] = 5000,
    top_k: Annotated[int, typer.Option(help="Leading eigen-directions counted as the low band.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the feature map.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the data.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
    pubkey: Annotated[Path | None, typer.Option(help="Require a valid signature by this public key "
                                                     "(ddkit keygen/sign).")] = None,
):
    """FFC eigen-spectrum and FLC band energy of real data and distilled sets (UniDD), as JSON and PNG."""
    import ddkit
    from ddkit.artifact import DistilledSet
    from ddkit.spectral.analysis import save_spectrum
    from ddkit.spectral.analysis import spectrum as run_spectrum

    sets = [DistilledSet.load(f, public_key=pubkey) for f in files]
    data = ddkit.load_dataset(real or sets[0].dataset, "train", data_root=data_root, download=download)
    results = [run_spectrum(s, data, model=model, n_real=n_real, top_k=top_k, seed=seed, device=device)
               for s in sets]
    js, png = save_spectrum(results, out_dir)
    for r in results:
        out.print(f"{r.method} IPC {r.ipc}: FLC energy in top-{r.top_k} directions real {r.low_share_real:.3f}, "
                  f"distilled {r.low_share_distilled:.3f}; mismatch low {r.mismatch_low:.3f} "
                  f"high {r.mismatch_high:.3f}")
    out.print(f"wrote {js} and {png}")


@app.command()
@_cli_errors
def keygen(prefix: Annotated[Path, typer.Option("--out", "-o", help="Writes PREFIX.key (private) and PREFIX.pub.")]):
    """Make an Ed25519 key pair for signing distilled sets."""
    from ddkit.signing import fingerprint, generate_keys, load_public_key

    key, pub = generate_keys(prefix)
    fp = fingerprint(load_public_key(pub))[:16]
    out.print(f"wrote {key} (private: keep it) and {pub} (public: hand it out); key {fp}")


@app.command()
@_cli_errors
def sign(
    file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    key: Annotated[Path, typer.Option(help="Private key (PREFIX.key from ddkit keygen).")],
    detached: Annotated[bool, typer.Option(help="Write FILE.sig beside the set instead of signing inside it.")] = False,
):
    """Sign a distilled set (Ed25519 over its digest): receivers check it with --pubkey."""
    from ddkit.signing import sign_file

    where = sign_file(file, key, detached=detached)
    out.print(f"signed {file} ({'signature in ' + str(where) if detached else 'signature inside the file'})")


@app.command()
@_cli_errors
def verify(
    file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    pubkey: Annotated[Path, typer.Option(help="The signer's public key (PREFIX.pub).")],
):
    """Check that a distilled set is unchanged since its signer signed it (exit 2 if not)."""
    from ddkit.signing import verify_file

    res = verify_file(file, pubkey)
    out.print(f"{file}: valid signature by key {res['key'][:16]} ({res['where']})")


@app.command()
@_cli_errors
def audit(
    file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for audit.json and report.html.")],
    parts: Annotated[str, typer.Option(help="Comma-separated: privacy,robustness,fairness (privacy needs a set "
                                            "made with --audit-split).")] = "privacy,robustness,fairness",
    model: Annotated[str, typer.Option(help="Network trained on the set (and the baselines).")] = "convnet",
    runs: Annotated[int, typer.Option(help="Networks per training set.")] = 2,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the protocol's).")] = None,
    shadows: Annotated[int, typer.Option(help="LiRA shadow pipelines (0: threshold attack only).")] = 0,
    shadow_epochs: Annotated[int, typer.Option(help="Epochs of each shadow network.")] = 100,
    examples: Annotated[int, typer.Option(help="Members (and as many non-members) attacked.")] = 2000,
    eps: Annotated[str, typer.Option(help="Comma-separated L∞ ε in pixel units, or 'mnist' for 0.1,0.3.")] =
        "0.00784,0.01569,0.03137",
    corruptions: Annotated[str, typer.Option(help="Comma-separated corruptions, 'none', or 'all' (glass_blur "
                                                  "is slow: ~12 s per image).")] = "default",
    test_images: Annotated[int, typer.Option(help="Test images for the robustness part.")] = 1000,
    full_baseline: Annotated[bool, typer.Option(help="Also train on the full real training set.")] = False,
    baseline_epochs: Annotated[int, typer.Option(help="Epochs of the full-data baseline.")] = 20,
    autoattack: Annotated[bool, typer.Option(help="Also run AutoAttack (L∞, standard version; slow) at each ε.")] =
        False,
    art_mia: Annotated[bool, typer.Option(help="Also run ART's membership attacks (rule-based, black-box) as a "
                                               "cross-check.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the data.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
    pubkey: Annotated[Path | None, typer.Option(help="Require a valid signature by this public key.")] = None,
):
    """Privacy (membership inference), robustness and fairness of a set, beside a random subset."""
    from ddkit.artifact import DistilledSet
    from ddkit.audit.report import DEFAULT_CORRUPTIONS, write_report
    from ddkit.audit.report import audit as run_audit
    from ddkit.audit.robustness import CORRUPTIONS

    try:
        eps_values = (0.1, 0.3) if eps.strip() == "mnist" else tuple(float(e) for e in eps.split(",") if e.strip())
    except ValueError:
        raise ConfigError(f"--eps must be numbers separated by commas or 'mnist', got {eps!r}") from None
    corr = {"default": DEFAULT_CORRUPTIONS, "all": CORRUPTIONS, "none": ()}.get(corruptions.strip())
    if corr is None:
        corr = tuple(c.strip() for c in corruptions.split(",") if c.strip())
    res = run_audit(DistilledSet.load(file, public_key=pubkey), parts=tuple(p.strip() for p in parts.split(",")
                                                                            if p.strip()),
                    model=model, runs=runs, epochs=epochs, shadows=shadows, shadow_epochs=shadow_epochs,
                    examples=examples, eps=eps_values, corruptions=corr, test_images=test_images,
                    full_baseline=full_baseline, baseline_epochs=baseline_epochs, seed=seed, device=device,
                    data_root=data_root, download=download,
                    attacks=("fgsm", "pgd", "autoattack") if autoattack else ("fgsm", "pgd"), art_mia=art_mia)
    js, page = write_report(res, out_dir)
    if "privacy" in res:
        m = res["privacy"]["distilled"]["threshold"]
        out.print(f"membership inference (threshold): AUC {m['auc']:.3f}, TPR@1% FPR {m['tpr_at_1pct_fpr']:.3f}")
        for name in ("art_rule_based", "art_black_box"):
            if name in res["privacy"]["distilled"]:
                a = res["privacy"]["distilled"][name]
                out.print(f"membership inference ({name}): AUC {a['auc']:.3f}, balanced accuracy "
                          f"{a['balanced_accuracy']:.3f}")
    if "robustness" in res:
        r = res["robustness"]["distilled"]
        out.print(f"robustness: clean {100 * r['clean']:.2f} %, " + ", ".join(
            f"{k} {100 * v:.2f} %" for k, v in r["adversarial"].items()))
    if "fairness" in res:
        f = res["fairness"]["distilled"]
        out.print(f"fairness: std across classes {100 * f['std']:.2f} pts, worst class {100 * f['worst']:.2f} %")
    out.print(f"wrote {js} and {page} ({res['seconds']['total']} s)")


attack_app = typer.Typer(cls=_OneLineErrors, no_args_is_help=True,
                         help="Backdoor attacks on distilled sets (dark, naive) and their measurement.")
app.add_typer(attack_app, name="attack")


@attack_app.command("dark")
@_cli_errors
def attack_dark(
    file: Annotated[Path, typer.Argument(help="The distilled set to poison (no raw data needed).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The poisoned set (.safetensors).")],
    target: Annotated[int, typer.Option(help="The backdoor's target class.")] = 0,
    trigger: Annotated[str | None, typer.Option(help="Trigger spec (default: the code's patch:size=1,inset=0,"
                                                     "value_sd=10).")] = None,
    alpha: Annotated[float, typer.Option(help="Weight of the backdoor term (0.6).")] = 0.6,
    trajectory: Annotated[int, typer.Option(help="Benign trajectory points 0..N (10).")] = 10,
    updates: Annotated[int, typer.Option(help="Updates per trajectory point and batch (101).")] = 101,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
):
    """Dark Distillation: backdoor a finished distilled set without raw data."""
    from ddkit.artifact import DistilledSet
    from ddkit.backdoor import DARK_TRIGGER, Trigger, dark
    from ddkit.utils import check_writable

    check_writable(out_file)
    trig = Trigger.parse(trigger) if trigger else DARK_TRIGGER
    res = dark(DistilledSet.load(file), target, trigger=trig, alpha=alpha, trajectory=trajectory, updates=updates,
               seed=seed, device=device, progress=not quiet)
    res.save(out_file)
    info = res.extra["backdoor"]
    out.print(f"wrote {out_file}: dark attack, target {target}, trigger {info['trigger']}, {info['seconds']} s")


def _poisoned_distillation(kind: str, out_file: Path, dataset: str, method: str, ipc: int, iterations: int | None,
                           target: int, share: float, trigger: str, set_: list[str] | None, seed: int, device: str,
                           quiet: bool, data_root: Path | None, download: bool, steps: int = 1000,
                           clamp: bool = False, neuron: str = "active") -> None:
    import ddkit
    from ddkit.backdoor import Doorping, Trigger, naive_poison
    from ddkit.distill import get_method, make_config
    from ddkit.utils import check_writable

    check_writable(out_file)
    settings = _parse_sets(set_ or [])
    make_config(get_method(method), {**settings, **({"iterations": iterations} if iterations is not None else {})})
    trig = Trigger.parse(trigger)
    real = ddkit.load_dataset(dataset, "train", data_root=data_root, download=download)
    poisoned, idx = naive_poison(real, target, trigger=trig, share=share, seed=seed)
    hook = None
    if kind == "doorping":
        if method not in ("dm", "dc", "dsa"):
            raise ConfigError(f"doorping runs with dm, dc or dsa (they expose their network), not {method!r}")
        hook = Doorping(tuple(real.images.shape[1:]), idx, trig, real.mean, real.std, steps=steps,
                        clamp=clamp, neuron=neuron, seed=seed)
    t0 = time.perf_counter()
    res = ddkit.distill(poisoned, method, ipc, iterations=iterations, config=settings, seed=seed, device=device,
                        progress=not quiet, hook=hook)
    res.extra["backdoor"] = {"attack": kind, "target": target, "trigger": trig.spec(), "share": share,
                             "poisoned_images": len(idx), "seed": seed, "method": method,
                             "seconds": round(time.perf_counter() - t0, 3)}
    if hook is not None and hook.pattern is not None:  # the optimised trigger travels with the set
        res.tensors["trigger"], res.tensors["trigger_mask"] = hook.pattern[0], hook.mask[0]
        ups = hook.updates
        res.extra["backdoor"].update(
            trigger_updates=len(ups), last_neuron=ups[-1]["neuron"], skipped_updates=sum(u["neuron"] < 0 for u in ups),
            mean_trigger_steps=round(sum(u["steps"] for u in ups) / len(ups), 1), trigger_clamped=clamp,
            trigger_range=[round(float(hook.pattern.min()), 4), round(float(hook.pattern.max()), 4)])
    res.save(out_file)
    out.print(f"wrote {out_file}: {kind} attack, {method} on {dataset} with {len(idx)} poisoned images "
              f"(target {target})")


@attack_app.command("naive")
@_cli_errors
def attack_naive(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The distilled set (.safetensors).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "fashion-mnist",
    method: Annotated[str, typer.Option(help="Distillation method (the papers: dm, dc, dsa).")] = "dm",
    ipc: Annotated[int, typer.Option(help="Images per class.")] = 10,
    iterations: Annotated[int | None, typer.Option(help="Iteration budget (default: the method's).")] = None,
    target: Annotated[int, typer.Option(help="The backdoor's target class.")] = 0,
    share: Annotated[float, typer.Option(help="Share of the raw images poisoned (1 %).")] = 0.01,
    trigger: Annotated[str, typer.Option(help="Trigger spec (baadd: patch:size=2,inset=1,value=1).")] = "patch",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Method setting key=value.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the data.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
):
    """NAIVEATTACK: distil from raw data of which a share carries the trigger and the target label."""
    _poisoned_distillation("naive", out_file, dataset, method, ipc, iterations, target, share, trigger, set_, seed,
                           device, quiet, data_root, download)


@attack_app.command("doorping")
@_cli_errors
def attack_doorping(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The distilled set (.safetensors).")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "fashion-mnist",
    method: Annotated[str, typer.Option(help="dm, dc or dsa.")] = "dm",
    ipc: Annotated[int, typer.Option(help="Images per class.")] = 10,
    iterations: Annotated[int | None, typer.Option(help="Iteration budget (default: the method's).")] = None,
    target: Annotated[int, typer.Option(help="The backdoor's target class.")] = 0,
    share: Annotated[float, typer.Option(help="Share of the raw images poisoned (1 %).")] = 0.01,
    trigger: Annotated[str, typer.Option(help="The patch whose pattern is optimised.")] = "patch",
    steps: Annotated[int, typer.Option(help="Trigger optimisation steps per iteration (≤ 1000).")] = 1000,
    clamp_trigger: Annotated[bool, typer.Option(help="Keep the pattern in [0, 1] (baadd does not clip it).")] = False,
    neuron: Annotated[str, typer.Option(help="Units the driven neuron is chosen among: active (on the trigger "
                                             "image; ddkit's default) or all (baadd's rule).")] = "active",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Method setting key=value.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the data.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
):
    """DOORPING: as naive, with the trigger optimised after every iteration (the set stores it)."""
    _poisoned_distillation("doorping", out_file, dataset, method, ipc, iterations, target, share, trigger, set_, seed,
                           device, quiet, data_root, download, steps=steps, clamp=clamp_trigger,
                           neuron=neuron)


@attack_app.command("measure")
@_cli_errors
def attack_measure(
    file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    target: Annotated[int, typer.Option(help="The backdoor's target class.")] = 0,
    trigger: Annotated[str | None, typer.Option(help="Trigger spec (default: the one the set records, else "
                                                     "baadd's patch).")] = None,
    trigger_from: Annotated[Path | None, typer.Option(help="Use the optimised pattern stored in this DOORPING set "
                                                           "(to measure a clean set under it).")] = None,
    victims: Annotated[str, typer.Option(help="Comma-separated victim architectures.")] =
        "convnet,mlp,lenet,alexnet,vgg11,resnet18",
    runs: Annotated[int, typer.Option(help="Networks per victim.")] = 2,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the protocol's).")] = None,
    augment: Annotated[bool, typer.Option(help="Train the victims with DSA augmentation (the hard protocol's); "
                                               "the Dark Distillation code trains without.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the first network.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for the test set.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download the dataset if no copy is found.")] = False,
):
    """CTA and ASR (non-target classes; and the authors' all-class count) per victim architecture."""
    from ddkit.backdoor import Trigger, measure
    from ddkit.utils import atomic_path, check_writable

    if json_out is not None:
        check_writable(json_out)
    m = measure(file, target, trigger=Trigger.parse(trigger) if trigger else None,
                victims=tuple(v.strip() for v in victims.split(",") if v.strip()), runs=runs, epochs=epochs,
                augment=augment, seed=seed, device=device, data_root=data_root, download=download,
                trigger_from=trigger_from)
    table = Table(title=f"{file.name}: target {target}, trigger {m.trigger}, {m.runs} runs × {m.epochs} epochs"
                       f"{'' if m.augment else ', no augmentation'}")
    for col in ("victim", "CTA (%)", "ASR non-target (%)", "ASR all classes (%)"):
        table.add_column(col)
    for r in m.victims:
        table.add_row(r["model"], f"{100 * r['cta']:.2f} ± {100 * r['cta_std']:.2f}",
                      f"{100 * r['asr']:.2f} ± {100 * r['asr_std']:.2f}", f"{100 * r['asr_all_classes']:.2f}")
    out.print(table)
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(m.to_json())



@app.command()
@_cli_errors
def scan(
    file: Annotated[Path, typer.Argument(help="A distilled set (.safetensors).")],
    detectors: Annotated[str, typer.Option(help="Comma-separated: neural-cleanse,activation-clustering,"
                                                "spectral-signatures.")] =
        "neural-cleanse,activation-clustering,spectral-signatures",
    model: Annotated[str, typer.Option(help="Network trained on the set (ConvNet-3 of width 32: fast on a CPU).")] =
        "convnet-w32",
    epochs: Annotated[int, typer.Option(help="Its training epochs.")] = 100,
    augment: Annotated[bool, typer.Option(help="Train it with DSA augmentation.")] = False,
    nc_epochs: Annotated[int, typer.Option(help="Neural Cleanse epochs per class.")] = 60,
    threshold: Annotated[float, typer.Option(help="Neural Cleanse's anomaly-index threshold.")] = 2.0,
    clean_data: Annotated[str | None, typer.Option(help="Flip real test images of this dataset in Neural Cleanse "
                                                        "instead of the set's own images.")] = None,
    clean_images: Annotated[int, typer.Option(help="How many (class-balanced) with --clean-data.")] = 500,
    expected_poison: Annotated[float, typer.Option(help="Spectral signatures' assumed poisoned share.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result as JSON.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder searched first for --clean-data.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download --clean-data if no copy is found.")] = False,
    pubkey: Annotated[Path | None, typer.Option(help="Require a valid signature by this public key.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
):
    """Score how likely a set carries a backdoor: Neural Cleanse, activation clustering, spectral signatures."""
    from ddkit.artifact import DistilledSet
    from ddkit.backdoor_scan import scan as run_scan
    from ddkit.utils import atomic_path, check_writable

    if json_out is not None:
        check_writable(json_out)
    if not file.is_file():
        raise ConfigError(f"{file}: no such file (give a distilled set, .safetensors)")
    res = run_scan(DistilledSet.load(file, public_key=pubkey),
                   detectors=tuple(d.strip() for d in detectors.split(",") if d.strip()), model=model, epochs=epochs,
                   augment=augment, nc_epochs=nc_epochs, threshold=threshold, clean_data=clean_data,
                   clean_images=clean_images, expected_poison=expected_poison, seed=seed, device=device,
                   data_root=data_root, download=download, progress=not quiet)
    res.file = str(file)
    det = res.detectors
    if "neural-cleanse" in det:
        nc = det["neural-cleanse"]
        table = Table(title=f"Neural Cleanse ({nc['inputs']}): reversed-mask L1 norm and MAD anomaly index")
        for col in ("class", "mask L1", "anomaly index", "attack success", "flagged"):
            table.add_column(col)
        for k, (n, a, s) in enumerate(zip(nc["norms"], nc["anomaly_index"], nc["success"], strict=True)):
            table.add_row(str(k), f"{n:.1f}", f"{a:.2f}", f"{100 * s:.0f} %", "yes" if k in nc["flagged"] else "")
        out.print(table)
    for name in ("activation-clustering", "spectral-signatures"):
        if name in det:
            r = det[name]
            table = Table(title=f"{name} (the set's own images)")
            for col in ("class", "score", "suspicious images", "flagged"):
                table.add_column(col)
            for row in r["per_class"]:
                score = f"silhouette {row['silhouette']:.3f}, clusters {row['cluster_sizes']}" \
                    if name == "activation-clustering" else f"max z {row['max_z']}"
                table.add_row(str(row["class"]), score, str(len(row["suspicious"])), "yes" if row["flagged"] else "")
            out.print(table)
    v = res.verdict
    out.print(f"verdict: {'SUSPICIOUS' if v['suspicious'] else 'no backdoor found'} ({v['rule']}; "
              f"score {v['score']}, threshold {v['threshold']}); flags: "
              + ", ".join(f"{k} {'yes' if f else 'no'}" for k, f in v["flags"].items())
              + f" ({res.seconds['total']} s)")
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(res.to_json())
        out.print(f"wrote {json_out}")


def main() -> None:
    """The ``ddkit`` console command: re-executed once under jemalloc where it is installed
    (:mod:`ddkit.allocator`; ``DDKIT_ALLOCATOR=system`` keeps the system's), then the app."""
    from ddkit import allocator

    allocator.reexec()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
