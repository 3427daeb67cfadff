"""Frozen per-benchmark presets: class names, layout, label transform and test settings.

Values follow docs/dataset_notes.md, 'Summary' and 'Label encodings and conversion tables', and
docs/method_notes.md, 'Per-dataset settings'.  Class names are spelled as
MMSegmentation's dataset classes spell them (identity is the *index*, never the name;
ADE20K index 7 is ``'bed '`` with a trailing space on purpose).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .registry import BenchmarkRegistry

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"

VOC20_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)

COCO_THING_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

COCO_STUFF_ONLY_CLASSES = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain",
    "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof",
    "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete",
    "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

PREPARE_SCRIPT = "python scripts/prepare_data.py"

CLASSES_DIR = Path(__file__).resolve().parent / "classes"


def _read_names(key: str) -> tuple[str, ...]:
    """Class names of a large benchmark, one per line in ``classes/<key>.txt`` (kept verbatim)."""
    return tuple((CLASSES_DIR / f"{key}.txt").read_text(encoding="utf-8").splitlines())


#: ADE20K-Full (847 classes), spelled as the official ProxyCLIP ``ADE20K847Dataset.METAINFO``.
ADE847_CLASSES = _read_names("ade847")
#: PASCAL Context 459, spelled as the official ProxyCLIP ``PascalContext459Dataset.METAINFO``.
CONTEXT459_CLASSES = _read_names("context459")
#: The value the CAT-Seg/MaskFormer preparation writes for unlabeled pixels of ADE-847 / PC-459 (uint16).
UNLABELED_16BIT = 65535


@dataclass(frozen=True)
class BenchmarkPreset:
    """Everything that defines one benchmark's test protocol.

    Label values seen by a model are ``lut[raw]`` where the LUT is identity or
    reduce-zero-label (0 -> 255, v -> v-1, 255 -> 255); valid values are
    ``[0, C) ∪ {ignore_index} ∪ extra_label_values``.

    The last fields have defaults (the eight original benchmarks use them unchanged):

    * ``ignore_index``: the metric's ignore value (pixels whose label equals it are not scored);
    * ``label_bits``: 8 (labels read as uint8) or 16 (uint16 maps, e.g. the TIFFs of ADE-847 / PC-459);
    * ``extra_label_values``: further on-disk values that are legitimate (65535 = unlabeled for the
      16-bit benchmarks);
    * ``mmseg_histc``: score with MMSegmentation ``IoUMetric``'s range arithmetic (labels outside
      ``[0, C)`` that are not ``ignore_index`` leave the label histogram but their predictions still
      count; ``ignore_index`` may then be a real class, which is dropped) -- the published protocol of
      ADE-847 / PC-459. ``False``: such labels are an error.
    * ``class_names_file``: where the class names came from (None: written in this module).
    """

    key: str
    class_names: tuple[str, ...]
    sub_path: str  # standard location under the data dir, e.g. "VOCdevkit/VOC2012"
    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_suffix: str
    split_file: str | None  # relative to the data root; None -> sorted recursive listing
    reduce_zero_label: bool
    expected_num_images: int
    short_side: int  # test-time short side S (long side capped at 2048)
    crop_size: int
    stride: int
    prob_thd: float
    background: bool  # class 0 is a scored background class
    has_ignore: bool  # whether 255 legitimately occurs in the transformed labels
    prepare_key: str  # sub-command of scripts/prepare_data.py
    download_hint: str
    ignore_index: int = 255
    label_bits: int = 8
    extra_label_values: tuple[int, ...] = ()
    mmseg_histc: bool = False
    vocabulary_path: str | None = None  # None: vocab/<key>.txt of this package
    vocabulary: tuple[tuple[str, ...], ...] | None = None  # custom datasets: synonyms per class, in label order
    official_config: str = ""  # the official repositories' test config (ProxyCLIP, SCLIP, NACLIP, ClearCLIP)
    official_classes: str = ""  # their class-name file (datamodules/vocab/<key>.txt is ProxyCLIP's copy)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "BenchmarkPreset":
        """A benchmark from a dataset card's keys (``docs/datasets.md``), as a dict; ``name`` is its ``--data`` key.

        ``data_root`` is its default location: an absolute folder, or a sub-path of the data folder
        (``$PROXYCLIP_DATA``, else ``data/``; ``--data-root`` for a run of several benchmarks) as the built-in
        benchmarks' ``sub_path``; without it the sub-path is ``name``. A single-benchmark ``--data-root`` may also
        point at the folder itself."""
        from .custom import DatasetCardError, custom_preset

        spec = dict(card)
        root = spec.pop("data_root", None)
        if not spec.get("name"):
            raise DatasetCardError("BenchmarkSpec.from_card needs 'name', the benchmark's --data key")
        preset = custom_preset(**spec)
        return dataclasses.replace(preset, sub_path=str(root) if root is not None else preset.key)

    @property
    def vocabulary_file(self) -> Path:
        """Query vocabulary (one class per line, synonyms separated by '; ')."""
        if self.vocabulary_path is not None:
            return Path(self.vocabulary_path)
        return VOCAB_DIR / f"{self.key}.txt"

    @property
    def max_label_value(self) -> int:
        """Largest value a label file may hold (255 for 8-bit presets, 65535 for 16-bit ones)."""
        return (1 << self.label_bits) - 1

    @property
    def is_custom(self) -> bool:
        return not self.prepare_key

    @property
    def prepare_command(self) -> str:
        if self.is_custom:
            return "(a user dataset: check data_root, img_dir, ann_dir, the suffixes and split_file)"
        return f"{PREPARE_SCRIPT} {self.prepare_key} --src <extracted download> --dst <data>/{self.sub_path}"


def _voc(key: str, classes: tuple[str, ...], reduce: bool, thd: float) -> BenchmarkPreset:
    return BenchmarkPreset(
        key=key, class_names=classes, sub_path="VOCdevkit/VOC2012",
        img_dir="JPEGImages", ann_dir="SegmentationClass", img_suffix=".jpg", seg_suffix=".png",
        split_file="ImageSets/Segmentation/val.txt", reduce_zero_label=reduce,
        expected_num_images=1449, short_side=336, crop_size=336, stride=112, prob_thd=thd,
        background=not reduce, has_ignore=True, prepare_key="voc", official_config=f"configs/cfg_{key}.py",
        official_classes=f"configs/cls_{key}.txt",
        download_hint="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    )


def _context(key: str, classes: tuple[str, ...], reduce: bool, thd: float) -> BenchmarkPreset:
    return BenchmarkPreset(
        key=key, class_names=classes, sub_path="VOCdevkit/VOC2010",
        img_dir="JPEGImages", ann_dir="SegmentationClassContext", img_suffix=".jpg",
        seg_suffix=".png", split_file="ImageSets/SegmentationContext/val.txt",
        reduce_zero_label=reduce, expected_num_images=5105, short_side=336, crop_size=336,
        stride=112, prob_thd=thd, background=not reduce, has_ignore=reduce,
        prepare_key="context", official_config=f"configs/cfg_{key}.py", official_classes=f"configs/cls_{key}.txt",
        download_hint="VOCtrainval_03-May-2010.tar + trainval_merged.json (PASCAL in Detail)",
    )


def _coco(key: str, classes: tuple[str, ...], suffix: str, thd: float, bg: bool) -> BenchmarkPreset:
    return BenchmarkPreset(
        key=key, class_names=classes, sub_path="coco_stuff164k",
        img_dir="images/val2017", ann_dir="annotations/val2017", img_suffix=".jpg",
        seg_suffix=suffix, split_file=None, reduce_zero_label=False, expected_num_images=5000,
        short_side=336, crop_size=336, stride=112, prob_thd=thd, background=bg,
        has_ignore=not bg, prepare_key=key, official_config=f"configs/cfg_{key}.py",
        official_classes=f"configs/cls_{key}.txt",
        download_hint="val2017.zip + stuffthingmaps_trainval2017.zip (COCO-Stuff-164k)",
    )


#: The built-in benchmarks (``BENCHMARKS`` adds installed and run-time ones).
BUILTIN_BENCHMARKS: dict[str, BenchmarkPreset] = {
    "voc21": _voc("voc21", ("background",) + VOC20_CLASSES, reduce=False, thd=0.2),
    "voc20": _voc("voc20", VOC20_CLASSES, reduce=True, thd=0.0),
    "context60": _context("context60", ("background",) + CONTEXT59_CLASSES, reduce=False, thd=0.15),
    "context59": _context("context59", CONTEXT59_CLASSES, reduce=True, thd=0.0),
    "coco_object": _coco("coco_object", ("background",) + COCO_THING_CLASSES,
                         "_instanceTrainIds.png", thd=0.25, bg=True),
    "coco_stuff": dataclasses.replace(_coco("coco_stuff", COCO_THING_CLASSES + COCO_STUFF_ONLY_CLASSES,
                                            "_labelTrainIds.png", thd=0.0, bg=False),
                                      official_config="configs/cfg_coco_stuff164k.py"),
    "cityscapes": BenchmarkPreset(
        key="cityscapes", class_names=CITYSCAPES_CLASSES, sub_path="cityscapes",
        img_dir="leftImg8bit/val", ann_dir="gtFine/val", img_suffix="_leftImg8bit.png",
        seg_suffix="_gtFine_labelTrainIds.png", split_file=None, reduce_zero_label=False,
        expected_num_images=500, short_side=448, crop_size=224, stride=112, prob_thd=0.0,
        background=False, has_ignore=True, prepare_key="cityscapes", official_config="configs/cfg_city_scapes.py",
        official_classes="configs/cls_city_scapes.txt",
        download_hint="leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip "
        "(https://www.cityscapes-dataset.com/downloads/, login required)",
    ),
    "ade20k": BenchmarkPreset(
        key="ade20k", class_names=ADE20K_CLASSES, sub_path="ade/ADEChallengeData2016",
        img_dir="images/validation", ann_dir="annotations/validation", img_suffix=".jpg",
        seg_suffix=".png", split_file=None, reduce_zero_label=True, expected_num_images=2000,
        short_side=448, crop_size=336, stride=112, prob_thd=0.0, background=False,
        has_ignore=True, prepare_key="ade20k", official_config="configs/cfg_ade20k.py",
        official_classes="configs/cls_ade20k.txt",
        download_hint="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    ),
    # ProxyCLIP configs/cfg_ade847.py, cfg_context459.py: Resize(scale=(2048, 448)), MyLoadAnnotations
    # (uint16, reduce_zero_label=False), slide 336/112 (ProxyCLIPSegmentation defaults), IoUMetric default
    # ignore_index=255. Layout of the CAT-Seg/MaskFormer preparation scripts.
    "ade847": BenchmarkPreset(
        key="ade847", class_names=ADE847_CLASSES, sub_path="ADE20K_2021_17_01",
        img_dir="images_detectron2/validation", ann_dir="annotations_detectron2/validation",
        img_suffix=".jpg", seg_suffix=".tif", split_file="validation.txt", reduce_zero_label=False,
        expected_num_images=2000, short_side=448, crop_size=336, stride=112, prob_thd=0.0,
        background=False, has_ignore=True, prepare_key="ade847", official_config="configs/cfg_ade847.py",
        official_classes="configs/cls_ade20k847.txt",
        download_hint="ADE20K_2021_17_01.zip (https://groups.csail.mit.edu/vision/datasets/ADE20K/, "
        "registration required)",
        ignore_index=255, label_bits=16, extra_label_values=(UNLABELED_16BIT,), mmseg_histc=True,
    ),
    "context459": BenchmarkPreset(
        key="context459", class_names=CONTEXT459_CLASSES, sub_path="VOCdevkit/VOC2010",
        img_dir="JPEGImages", ann_dir="annotations_detectron2/pc459_val", img_suffix=".jpg",
        seg_suffix=".tif", split_file="ImageSets/SegmentationContext/val.txt", reduce_zero_label=False,
        expected_num_images=5105, short_side=448, crop_size=336, stride=112, prob_thd=0.0,
        background=False, has_ignore=True, prepare_key="context459", official_config="configs/cfg_context459.py",
        official_classes="configs/cls_context459.txt",
        download_hint="VOCtrainval_03-May-2010.tar + trainval.tar.gz (459-label .mat maps and labels.txt, "
        "https://cs.stanford.edu/~roozbeh/pascal-context/)",
        ignore_index=255, label_bits=16, extra_label_values=(UNLABELED_16BIT,), mmseg_histc=True,
    ),
}

#: Every benchmark: the built-in ones, then installed (entry points) and run-time ones (:mod:`datamodules.registry`).
BENCHMARKS = BenchmarkRegistry(BUILTIN_BENCHMARKS)
#: A benchmark of the registry is a preset.
BenchmarkSpec = BenchmarkPreset

#: The eight benchmarks of the ProxyCLIP paper's main table (``scripts/test.py --data all``).
MAIN_BENCHMARKS = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")

assert all(len(BUILTIN_BENCHMARKS[k].class_names) == n for k, n in zip(
    MAIN_BENCHMARKS + ("ade847", "context459"), (21, 60, 81, 20, 59, 171, 19, 150, 847, 459)))
