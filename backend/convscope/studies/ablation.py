"""Layer ablation (the paper's Table 3): remove or resize layers, retrain, compare.

Every variant is trained with the same budget (epochs, batch size, schedule) and the
same seeds; the table gives train and validation top-1 (and top-5 with ≥ 5 classes)
as error rates, like the paper, with mean ± std over seeds.

Variants are separated by `;`. Within a variant, changes are separated by spaces or `+`:

- `full`: the architecture as given (the paper's "Our Model (as per Fig. 3)");
- `-6,7`, `-3,4`, `-3,4,6,7`, `-7`: remove layers (conv3..conv5, fc6, fc7);
- `fc=2048` or `fc=x0.5`: units in fc6 and fc7 (absolute, or a multiple of the base);
- `conv345=512,1024,512` or `conv345=x1.33,x2.67,x2`: maps in conv3, conv4, conv5;
- `widths=96,256,384,384,256`: all five conv widths.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from convscope.errors import InvalidRequestError
from convscope.studies.data import ImageSet, dataset_id, load_dataset
from convscope.studies.store import FORMAT_VERSION, markdown_table, mean_std, pct, write_json, write_text
from convscope.studies.train import Echo, TrainConfig, train
from convscope.tasks import Task

DEFAULT_VARIANTS = "full;-7;-6,7;-3,4;-3,4,6,7;fc=x0.5;fc=x2;conv345=x1.33,x2.67,x2"


@dataclass(frozen=True)
class Variant:
    spec: str  # as written
    remove: tuple[str, ...] = ()
    fc_width: str | None = None  # "2048" or "x0.5"
    conv345: tuple[str, ...] | None = None
    widths: tuple[int, ...] | None = None

    @property
    def slug(self) -> str:
        text = re.sub(r"(^|\s|\+)-", r"\1no", self.spec)
        text = re.sub(r"[^A-Za-z0-9.]+", "_", text.replace("=", "-")).strip("_")
        return text or "full"

    def apply(self, base: TrainConfig) -> TrainConfig:
        widths = list(self.widths or base.resolved_widths)
        if self.conv345 is not None:
            for i, value in enumerate(self.conv345):
                widths[2 + i] = _size(value, base.resolved_widths[2 + i])
        fc_width = base.resolved_fc_width if self.fc_width is None else _size(self.fc_width, base.resolved_fc_width)
        remove = tuple(dict.fromkeys((*base.remove, *self.remove)))
        return replace(base, remove=remove, widths=tuple(widths), fc_width=fc_width)

    def label(self, base: TrainConfig) -> str:
        """A Table 3-style description, with the sizes this variant really has."""
        if not (self.remove or self.fc_width or self.conv345 or self.widths):
            return "Full model (Fig. 3 topology)"
        config = self.apply(base)
        parts = []
        if self.remove:
            numbers = ",".join(name.removeprefix("conv").removeprefix("fc") for name in self.remove)
            parts.append(f"Removed layer{'s' if len(self.remove) > 1 else ''} {numbers}")
        if self.fc_width:
            parts.append(f"Layers 6,7: {config.resolved_fc_width} units")
        if self.conv345:
            parts.append(f"Layers 3,4,5: {','.join(str(w) for w in config.resolved_widths[2:])} maps")
        if self.widths:
            parts.append(f"Conv widths {','.join(str(w) for w in config.resolved_widths)}")
        return "; ".join(parts)


def _size(value: str, base: int) -> int:
    text = value.strip().lower()
    try:
        size = round(base * float(text[1:])) if text.startswith("x") else int(text)
    except ValueError:
        raise InvalidRequestError(f"bad size {value!r}: use a number or xFACTOR (e.g. x0.5)") from None
    if size < 1:
        raise InvalidRequestError(f"size {value!r} gives {size} units")
    return size


def parse_variants(spec: str) -> list[Variant]:
    """`full;-6,7;-3,4;-3,4,6,7;fc=2048` -> variants (also accepts `full,-6,7;…`)."""
    text = re.sub(r"^\s*full\s*,", "full;", spec.strip())
    variants: list[Variant] = []
    for raw in text.split(";"):
        raw = raw.strip()
        if not raw:
            continue
        remove: list[str] = []
        fc_width: str | None = None
        conv345: tuple[str, ...] | None = None
        widths: tuple[int, ...] | None = None
        for token in re.split(r"[\s+]+", raw):
            if not token or token.lower() == "full":
                continue
            if token.startswith("-"):
                remove.extend(part for part in token[1:].split(",") if part)
            elif token.lower().startswith("fc="):
                fc_width = token[3:]
                _size(fc_width, 1000)
            elif token.lower().startswith("conv345="):
                conv345 = tuple(token[8:].split(","))
                if len(conv345) != 3:
                    raise InvalidRequestError(f"conv345 needs three sizes (conv3,conv4,conv5): {token!r}")
                for value in conv345:
                    _size(value, 1000)
            elif token.lower().startswith("widths="):
                try:
                    widths = tuple(int(w) for w in token[7:].split(","))
                except ValueError:
                    raise InvalidRequestError(f"bad widths {token!r}") from None
                if len(widths) != 5:
                    raise InvalidRequestError(f"widths needs five numbers: {token!r}")
            else:
                raise InvalidRequestError(
                    f"cannot read {token!r} in variant {raw!r}: use full, -L,L (remove), fc=N, conv345=A,B,C or widths=…"
                )
        try:
            from convscope.models.zfnet import removable_layers

            normalised = removable_layers(remove)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        variants.append(Variant(raw, normalised, fc_width, conv345, widths))
    if not variants:
        raise InvalidRequestError("no variants given")
    slugs = [v.slug for v in variants]
    if len(set(slugs)) != len(slugs):
        raise InvalidRequestError("two variants are the same")
    return variants


@dataclass
class AblationResult:
    document: dict[str, Any]
    markdown: str
    runs: list[dict[str, Any]] = field(default_factory=list)


def ablate(
    base: TrainConfig,
    variants: Sequence[Variant],
    out: str | Path,
    *,
    device: str = "auto",
    seeds: int = 1,
    task: Task | None = None,
    echo: Echo | None = None,
    data: ImageSet | None = None,
) -> AblationResult:
    """Train every variant for every seed (resuming finished runs) and tabulate."""
    if seeds < 1:
        raise InvalidRequestError("seeds must be at least 1")
    say = echo or (lambda _text: None)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    images = data if data is not None else load_dataset(base.data)
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    seed_list = [base.seed + s for s in range(seeds)]
    for variant in variants:
        config = variant.apply(base)
        runs = []
        parameters = 0
        for seed in seed_list:
            run_config = replace(config, seed=seed, checkpoint_epochs=str(config.epochs))
            run_dir = folder / "runs" / variant.slug / f"seed-{seed}"
            say(f"variant {variant.spec!r} seed {seed}: {run_dir}")
            result = train(run_config, run_dir, device=device, task=task, echo=echo, data=images)
            final = result.final
            parameters = int(result.log["parameters"])
            runs.append(
                {
                    "seed": seed,
                    "train_top1": final["train"]["top1"],
                    "val_top1": final["val"]["top1"],
                    "val_top5": final["val"]["top5"],
                    "train_running_top1": result.log["epochs"][-1]["train_top1"],
                    "seconds": result.log["seconds"],
                    "folder": run_dir.relative_to(folder).as_posix(),
                }
            )
        row: dict[str, Any] = {
            "variant": variant.spec,
            "label": variant.label(base),
            "remove": list(config.remove),
            "widths": list(config.resolved_widths),
            "fc_width": config.resolved_fc_width,
            "parameters": parameters,
            "runs": runs,
            "train_top1": mean_std([r["train_top1"] for r in runs]),
            "val_top1": mean_std([r["val_top1"] for r in runs]),
            "val_top5": mean_std([r["val_top5"] for r in runs]) if runs[0]["val_top5"] is not None else None,
            "seconds": sum(r["seconds"] for r in runs),
        }
        rows.append(row)
        say(f"{row['label']}: val top-1 error {pct(row['val_top1'], error=True)}%")

    top5 = rows[0]["val_top5"] is not None
    document: dict[str, Any] = {
        "study": "ablation",
        "version": FORMAT_VERSION,
        "finished": True,
        "title": f"Layer ablation (Table 3): {base.arch} on {dataset_id(base.data)}",
        "dataset": dataset_id(base.data),
        "arch": base.arch,
        "config": base.to_dict(),
        "seeds": seed_list,
        "epochs": base.epochs,
        "metric": "error",
        "top5": top5,
        "variants": rows,
        "markdown": "ablation.md",
        # training time of every run (kept across resumed invocations), and this invocation's wall time
        "seconds": sum(row["seconds"] for row in rows),
        "wall_seconds": time.perf_counter() - began,
    }
    markdown = ablation_markdown(document)
    write_text(folder / "ablation.md", markdown)
    write_json(folder / "ablation.json", document)
    return AblationResult(document, markdown, rows)


def ablation_markdown(document: dict[str, Any]) -> str:
    header = ["Variant", "Parameters", "Train top-1 err %", "Val top-1 err %"]
    if document.get("top5"):
        header.append("Val top-5 err %")
    rows = []
    for row in document["variants"]:
        cells = [
            row["label"],
            f"{row['parameters']:,}",
            pct(row["train_top1"], error=True),
            pct(row["val_top1"], error=True),
        ]
        if document.get("top5"):
            cells.append(pct(row["val_top5"], error=True))
        rows.append(cells)
    seeds = document["seeds"]
    note = (
        f"{document['title']}. {document['epochs']} epochs, seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(str(s) for s in seeds)}"
        + (" (mean ± std over seeds)" if len(seeds) > 1 else "")
        + f"; {document['seconds']:.0f} s of training in all.\n\n"
    )
    return note + markdown_table(header, rows)
