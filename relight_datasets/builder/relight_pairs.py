"""``RelightPairs``: the dataset as a ``datasets`` builder (features declared once, versioned, one config per preset).

``datasets`` >= 4 runs no loading scripts, so what goes to the Hub is Parquet plus the card (see
:mod:`relight_datasets.builder.build`); this builder is how the package produces the same rows inside the
``datasets`` machinery, and how a user rebuilds them::

    builder = RelightPairs(config_name="mvp", source="folder:/path/to/portraits", limit=100)
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
"""

from __future__ import annotations

import datasets
import pyarrow.compute as pc

from ..config import PRESETS, load_config
from .chunks import ChunkProcessor
from .features import FEATURES
from .sources import open_source
from .splits import assign_split, parse_splits

DATASET_VERSION = "0.1.0"


class RelightPairsConfig(datasets.BuilderConfig):
    """A preset plus where the photos come from and how to split them.

    ``source``: as ``--source``; ``limit``: at most this many images; ``overrides``: ``"key=value"`` config overrides;
    ``splits``: as ``--splits``; ``device``/``batch_size``: where and how the stages run (not part of the rows).
    """

    def __init__(self, *, source: str | None = None, limit: int | None = None, overrides: tuple[str, ...] = (),
                 splits: str = "train=1", device: str = "auto", batch_size: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.limit = limit
        self.overrides = tuple(overrides)
        self.splits = splits
        self.device = device
        self.batch_size = batch_size


class RelightPairs(datasets.ArrowBasedBuilder):
    """Relighting pairs built from portrait photos (see the package README for the schema)."""

    VERSION = datasets.Version(DATASET_VERSION)
    BUILDER_CONFIG_CLASS = RelightPairsConfig
    BUILDER_CONFIGS = [RelightPairsConfig(name=preset, version=datasets.Version(DATASET_VERSION),
                                          description=f"the {preset} preset") for preset in PRESETS]
    DEFAULT_CONFIG_NAME = "mvp"

    def _build_config(self):
        overrides = [*self.config.overrides, f"output.dataset_version={self.VERSION}"]
        return load_config(self.config.name, overrides=overrides)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="Portrait relighting pairs: input, mask, albedo, relit person and composite, with metadata.",
            features=FEATURES, version=self.VERSION,
        )

    def _split_generators(self, dl_manager):
        if not self.config.source:
            raise ValueError("RelightPairs needs a source, e.g. RelightPairs(config_name='mvp', source='folder:PATH')")
        splits = parse_splits(self.config.splits)
        return [datasets.SplitGenerator(name=name, gen_kwargs={"split": name, "splits": splits}) for name in splits]

    def _generate_tables(self, split: str, splits: dict[str, float]):
        """Only this split's rows are processed: the split of a row is fixed by its ``image_id`` alone."""
        source = open_source(self.config.source, self.config.limit).rows
        ours = [i for i, image_id in enumerate(source["image_id"]) if assign_split(image_id, splits) == split]
        processor = ChunkProcessor(self._build_config(), splits, self.config.device, self.config.batch_size)
        for start in range(0, len(ours), processor.batch_size):
            table = processor.process(source.select(ours[start : start + processor.batch_size]))
            kept = table.filter(pc.equal(table.column("skip_reason"), ""))
            yield start, kept.select(list(FEATURES))
