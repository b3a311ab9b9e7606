"""The dataset card (README.md with YAML metadata) written next to the Parquet shards."""

from __future__ import annotations

from huggingface_hub import DatasetCard, DatasetCardData

from .. import __version__
from ..config import BuildConfig
from .features import COLUMN_DESCRIPTIONS, features_for
from .report import sizes_text


def size_category(rows: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return label
    return "n>1M"


def describe_model(info: dict) -> str:
    """One line for a stage's entry in ``report["models"]``: method, checkpoint and revision, fallbacks taken."""
    text = info.get("method", "?")
    if "model" in info:
        text += f" (`{info['model']}` revision `{info['revision']}`, {info['dtype']})"
    boxes = info.get("boxes", {})
    if "detector" in boxes:
        text += f", boxes from `{boxes['detector']['model']}`"
    elif "face_prior" in boxes:
        text += ", boxes from the face prior"
    if "faces" in info:
        text = f"{info['faces']['method']} faces over {text}"
    for fallback in info.get("fallbacks", []):
        text += f"; {fallback['method']} unavailable ({fallback['reason']})"
    return text


COMPACT_USE = """
This is a **compact** build: `degraded` and `composite` are not stored (they are half of a row's bytes). They are
a function of the stored columns and the build's config and seed, and come back bit for bit:

```python
import relight_datasets
from huggingface_hub import DatasetCard

config = DatasetCard.load("PATH_OR_REPO_ID").data.to_dict()["relight_datasets"]["config"]
pairs = relight_datasets.regenerate_pairs(ds, config)   # adds degraded and composite, as a full build stores them
```

For training, `relight_datasets.transforms.RelightOnTheFly` draws a new light per epoch from the same columns.
"""


def build_card(config: BuildConfig, report: dict) -> DatasetCard:
    """A ``DatasetCard`` whose YAML carries features, splits, version, package version, config and fingerprint.

    The card declares no ``configs``/``data_files``: ``datasets`` finds ``data/<split>-*.parquet`` by the Hub's
    default layout, and keys its local cache on the files themselves. (With ``data_files`` in the YAML, two folders
    with identical cards would share one cache entry and ``load_dataset`` could return another build's rows.)
    """
    stored = features_for(config.output.layout)
    splits = [{"name": name, "num_examples": count, "num_bytes": report["split_bytes"][name]}
              for name, count in report["splits"].items() if count]
    data = DatasetCardData(
        license=config.output.license,
        task_categories=["image-to-image"],
        tags=["relighting", "portrait", "intrinsic-images", "relight-datasets"],
        size_categories=size_category(report["processed"]),
        pretty_name="Relighting pairs",
        dataset_info={"features": stored._to_yaml_list(), "splits": splits},
        version=config.output.dataset_version,
        relight_datasets={
            "package_version": __version__,
            "config_fingerprint": report["config_fingerprint"],
            "source": report["source"],
            "models": report["models"],
            "layout": config.output.layout,
            "image_sizes": report["image_sizes"],
            "config": config.to_dict(),
        },
    )
    columns = "\n".join(f"| `{name}` | {COLUMN_DESCRIPTIONS[name]} |" for name in stored)
    layout_text = "" if config.output.layout == "full" else COMPACT_USE
    splits_text = ", ".join(f"{name}: {count}" for name, count in report["splits"].items() if count)
    if report["empty_splits"]:
        splits_text += f"; no rows fell into {', '.join(report['empty_splits'])}, so there is no such split"
    models_text = "\n".join(f"- {stage}: {describe_model(info)}" for stage, info in report["models"].items())
    skipped = "\n".join(f"- `{reason}`: {count}" for reason, count in report["skipped"].items()) or "- none"
    body = f"""
# Relighting pairs

Portrait relighting training pairs built with [relight-datasets](https://pypi.org/project/relight-datasets/)
{__version__}: each row holds a photo (`input`), the person mask, the person's estimated albedo, the albedo under
a new light (`degraded`) and that relit person composited over the photo's background (`composite`): the same
person in the same scene under different light.

- dataset version: **{config.output.dataset_version}**
- source: `{report["source"]}`
- config fingerprint: `{report["config_fingerprint"]}` (the resolved config is in this card's YAML header)
- rows: {report["processed"]} of {report["attempted"]} attempted ({splits_text})
- {sizes_text(report)} (resolution setting: long side at most {config.resolution} px); layout
  `{config.output.layout}`, {report["bytes_per_row"] / 1e3:.0f} kB per row

Models:
{models_text or "- none recorded"}

Skipped inputs, by reason:
{skipped}

## Columns

| column | meaning |
|---|---|
{columns}

## Use

```python
from datasets import load_dataset
ds = load_dataset("PATH_OR_REPO_ID", split="train")
```
{layout_text}
![preview](preview.png)
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")
