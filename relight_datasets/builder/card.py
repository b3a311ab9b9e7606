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


SOURCE_LICENSES = {
    "ffhq": ("cc-by-nc-sa-4.0", "Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
             "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
}
"""Licences of the sources the tool knows: id on the Hub, name, link. FFHQ's images are published under CC BY-NC-SA
4.0 by NVIDIA (https://github.com/NVlabs/ffhq-dataset), with each photo under its own Flickr licence."""
PLACEHOLDER_REPO = "ORG/NAME"
FFHQ_CITATION = """@inproceedings{karras2019style,
  title     = {A Style-Based Generator Architecture for Generative Adversarial Networks},
  author    = {Karras, Tero and Laine, Samuli and Aila, Timo},
  booktitle = {CVPR},
  year      = {2019}
}"""


def is_ffhq(source: str) -> bool:
    """Whether ``--source`` is FFHQ: the ``ffhq`` alias or the Hub dataset it streams from."""
    from .sources import DEFAULT_FFHQ_REPO

    return source == "ffhq" or source.split(":")[:2] == ["hf", DEFAULT_FFHQ_REPO]


def public_source_name(source: str) -> str:
    """``--source`` as the card shows it: Hub ids as they are, local folders and lists without their path."""
    kind, _, rest = source.partition(":")
    if source == "ffhq" or kind == "hf":
        return f"FFHQ (`{source}`)" if is_ffhq(source) else f"the Hub dataset `{rest}`"
    return "a local list of image files (CSV)" if kind == "csv" else "a local folder of images"


def resolve_license(source: str, given: str) -> tuple[str, str | None, str | None]:
    """The dataset's licence ``(hub id, name, link)``: ``given`` (``output.license`` / ``--license``) when set,
    else the source's when the tool knows it (FFHQ), else ``("unknown", None, None)``."""
    if given:
        return given, None, None
    if is_ffhq(source):
        return SOURCE_LICENSES["ffhq"]
    return "unknown", None, None


def pretty_name(repo_id: str | None) -> str:
    """``org/relight-pairs`` -> ``Relight Pairs``; the tool's name without a repo."""
    if not repo_id:
        return "Relighting pairs"
    return " ".join(word.capitalize() for word in repo_id.split("/")[-1].replace("_", "-").split("-") if word)


COMPACT_USE = """
This is a **compact** build: `degraded` and `composite` are not stored (they are half of a row's bytes). They are
a function of the stored columns and the build's config and seed, and come back bit for bit:

```python
import relight_datasets
from huggingface_hub import DatasetCard

config = DatasetCard.load("{repo}").data.to_dict()["relight_datasets"]["config"]
pairs = relight_datasets.regenerate_pairs(ds, config)   # adds degraded and composite, as a full build stores them
```

For training, `relight_datasets.transforms.RelightOnTheFly` draws a new light per epoch from the same columns.
"""


def build_card(config: BuildConfig, report: dict, repo_id: str | None = None) -> DatasetCard:
    """A ``DatasetCard`` whose YAML carries features, splits, version, package version, config and fingerprint.

    The card declares no ``configs``/``data_files``: ``datasets`` finds ``data/<split>-*.parquet`` by the Hub's
    default layout, and keys its local cache on the files themselves. (With ``data_files`` in the YAML, two folders
    with identical cards would share one cache entry and ``load_dataset`` could return another build's rows.)
    """
    stored = features_for(config.output.layout)
    license_id, license_name, license_link = resolve_license(report["source"], config.output.license)
    extra_license = ({"license_name": license_name, "license_link": license_link}
                     if license_name and license_id == "other" else {})
    repo = repo_id or PLACEHOLDER_REPO
    splits = [{"name": name, "num_examples": count, "num_bytes": report["split_bytes"][name]}
              for name, count in report["splits"].items() if count]
    data = DatasetCardData(
        license=license_id,
        **extra_license,
        task_categories=["image-to-image"],
        tags=["relighting", "portrait", "intrinsic-images", "relight-datasets"],
        size_categories=size_category(report["processed"]),
        pretty_name=pretty_name(repo_id),
        dataset_info={"features": stored._to_yaml_list(), "splits": splits},
        version=config.output.dataset_version,
        relight_datasets={
            "package_version": __version__,
            "config_fingerprint": report["config_fingerprint"],
            "source": public_source_name(report["source"]),
            "models": report["models"],
            "layout": config.output.layout,
            "image_sizes": report["image_sizes"],
            "config": config.to_dict(),
        },
    )
    columns = "\n".join(f"| `{name}` | {COLUMN_DESCRIPTIONS[name]} |" for name in stored)
    layout_text = "" if config.output.layout == "full" else COMPACT_USE.format(repo=repo)
    placeholder = "" if repo_id else (f"\n(`{PLACEHOLDER_REPO}` stands for this dataset's Hub repo id, or the local "
                                      "folder it was written to.)\n")
    licence_text = (f"[{license_name}]({license_link}), inherited from the source" if license_name
                    else f"`{license_id}`" + (" (set with `--license`)" if config.output.license else
                                               ": the source's licence is not known to the tool; pass `--license`"))
    citations = f"\n\nThe source images:\n\n```bibtex\n{FFHQ_CITATION}\n```" if is_ffhq(report["source"]) else ""
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
- source: {public_source_name(report["source"])}
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
ds = load_dataset("{repo}", split="train")
```
{placeholder}{layout_text}
Training with a new light every epoch (the build's own relighting function, from the stored `albedo`, `normals`,
`mask` and `input`):

```python
from huggingface_hub import DatasetCard
from relight_datasets.transforms import Compose, PairedTransform, RelightOnTheFly

config = DatasetCard.load("{repo}").data.to_dict()["relight_datasets"]["config"]
transform = Compose([PairedTransform(512), RelightOnTheFly(config, seed=0)])
ds.set_transform(transform, columns=["image_id", "input", "mask", "albedo", "normals"])
# each epoch: transform.set_epoch(epoch); then batch["input"] -> batch["composite"], batch["instruction"]
```

![preview](preview.png)

## Licence

{licence_text}. The relit images are derived from the source photos and carry their terms; the tool's code is
Apache-2.0.

## Personal data

The rows are photos of real people's faces, with person masks, face geometry and albedo derived from them. Use them
for relighting research within the source's terms; do not use them to identify people. Honour removal requests
made to the source dataset by removing the same images here (rows are keyed by `image_id`).

## Biases and limitations

- The light is synthetic: one to three distant lights of drawn colour temperatures, or a procedural sky or room,
  as second-order spherical harmonics; Lambertian shading in linear light of estimated normals, with the shadows
  and ambient occlusion of a height field integrated from those normals, shadow patterns on the key light and a
  Phong highlight. There is no interreflection or subsurface scattering, hair is shaded as a smooth bulge, the
  background keeps its original light, and a model trained only on these pairs learns this light model.
- Masks, normals and albedo are estimates: each row's `segmentation_method` and `normals_method` say what made them
  (fallbacks are weaker: `classical` masks, `mask_inflation` normals for faces that were not found), and the
  albedo keeps some of the original light (`albedo_blend_ratio`).
- The people are those of the source, with its biases in age, skin tone, pose and photo style; the face models
  miss small, turned-away or blurry faces more often.

## Citation

```bibtex
@software{{relight_datasets,
  title   = {{relight-datasets: relighting training pairs from portrait photos}},
  version = {{{__version__}}},
  year    = {{2026}}
}}
```{citations}
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")
