"""The schema of ``params.yaml``, validated with pydantic when a stage starts.

Every model forbids unknown keys, so a misspelled key (``n_subject`` for ``n_subjects``) is an error that names it
instead of being silently ignored (DVC's ``exp run -S`` adds unknown keys without complaint). Stages read their own
sections through :class:`StageParams`, which refuses any section the stage did not declare in ``dvc.yaml``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python

from pipeline.constants import DEMO_EXPRESSIONS, LABEL_COLUMNS, MODALITY_LABELS
from pipeline.errors import ParamsError
from pipeline.paths import GENERATED
from pipeline.reader_options import OPTION_MODELS
from pipeline.settings import (
    CariSettings,
    DisjointSettings,
    FinetuneSettings,
    PretrainRuntime,
    PretrainSettings,
    RuntimeSettings,
    TaskSetSettings,
    TransferSettings,
    check_device,
    under_protocols,
)

__all__ = [
    "AUTO_VARIANTS",
    "CariConfig",
    "DISJOINT_MODES",
    "DisjointConfig",
    "DisjointMethod",
    "DisjointSource",
    "DatasetConfig",
    "DemoCaricatureSource",
    "DemoExpressionSource",
    "DemoIdentitySource",
    "LabelSetConfig",
    "LfwSource",
    "LicensedSource",
    "Params",
    "STANDARD_LABEL_SETS",
    "StageParams",
    "cari_method_options",
    "disjoint_transfer",
    "load_params",
    "plain",
    "reader_options",
]


#: a torch device name, validated
Device = Annotated[str, AfterValidator(check_device)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseConfig(_Strict):
    seed: int = 0


class DemoConfig(_Strict):
    """Shared settings of the embedded demo generator."""

    seed: int = 2019
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    quality: Annotated[int, Field(ge=50, le=100)] = 95


class DemoExpressionSource(_Strict):
    """A demo dataset laid out like Oulu-CASIA VIS/Strong (subjects × 6 expression sequences)."""

    kind: Literal["demo_expression"]
    first_identity: Annotated[int, Field(ge=0)] = 0
    n_subjects: Annotated[int, Field(ge=1, le=999)] = 40
    expressions: list[str] = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
    frames: tuple[Annotated[int, Field(ge=2)], Annotated[int, Field(ge=2)]] = (6, 9)
    image_size: tuple[Annotated[int, Field(ge=64)], Annotated[int, Field(ge=64)]] = (320, 240)

    @model_validator(mode="after")
    def _frames_ordered(self) -> DemoExpressionSource:
        if self.frames[0] > self.frames[1]:
            raise ValueError(f"frames must be [min, max], got {list(self.frames)}")
        unknown = [e for e in self.expressions if e not in DEMO_EXPRESSIONS]
        if unknown:
            raise ValueError(f"expressions: unknown {unknown}; the demo draws {list(DEMO_EXPRESSIONS)}")
        if len(set(self.expressions)) != len(self.expressions) or not self.expressions:
            raise ValueError(f"expressions must be a non-empty list without repeats, got {self.expressions}")
        return self

    def identity_range(self) -> range:
        return range(self.first_identity, self.first_identity + self.n_subjects)


class DemoIdentitySource(_Strict):
    """A demo dataset laid out like CASIA-WebFace (identity folders, no expression labels)."""

    kind: Literal["demo_identity"]
    first_identity: Annotated[int, Field(ge=0)] = 1000
    n_identities: Annotated[int, Field(ge=1)] = 100
    images_per_identity: Annotated[int, Field(ge=1)] = 30
    image_size: tuple[Annotated[int, Field(ge=64)], Annotated[int, Field(ge=64)]] = (250, 250)

    def identity_range(self) -> range:
        return range(self.first_identity, self.first_identity + self.n_identities)


def _url(value: str) -> str:
    if not re.fullmatch(r"https?://\S+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _checksum(value: str) -> str:
    if not re.fullmatch(r"md5:[0-9a-fA-F]{32}|sha256:[0-9a-fA-F]{64}", value):
        raise ValueError(f"expected md5:<32 hex digits> or sha256:<64 hex digits>, got {value!r}")
    return value


Url = Annotated[str, AfterValidator(_url)]
Checksum = Annotated[str, AfterValidator(_checksum)]


class LfwSource(_Strict):
    """LFW, downloaded from its public URL (checksummed, resumable) and extracted into ``data/raw/<name>/``."""

    kind: Literal["lfw"]
    #: None = the official URLs and md5s in pipeline.data.download.KNOWN_DOWNLOADS (set them to use a mirror)
    url: Url | None = None
    checksum: Checksum | None = None
    pairs_url: Url | None = None
    pairs_checksum: Checksum | None = None


class LicensedSource(_Strict):
    """A licensed dataset the user obtains by hand; ``download`` only verifies it at ``root``.

    ``tsv`` is the MS-Celeb-1M cleaned TSV (the ``msceleb`` reader): ``download`` extracts it into shards at ``root``.
    ``fingerprint``: ``content`` hashes every file into the listing, ``stat`` uses sizes and mtimes
    (fast for 500k files).
    """

    kind: Literal["licensed"]
    tsv: str | None = None
    shard_size: Annotated[int, Field(ge=1)] = 10000
    fingerprint: Literal["content", "stat"] = "stat"


class DemoCaricatureSource(_Strict):
    """A demo caricature dataset (:mod:`pipeline.data.demo_caricature`): photos of its own identities from the demo
    renderer plus caricatures of the same identities, written in CaVI's (``layout: cavi``) or WebCaricature's
    (``layout: webcaricature``) on-disk layout together with that dataset's protocol files."""

    kind: Literal["demo_caricature"]
    layout: Literal["cavi", "webcaricature"]
    first_identity: Annotated[int, Field(ge=0)] = 5000
    n_identities: Annotated[int, Field(ge=2)] = 24
    photos_per_identity: Annotated[int, Field(ge=2)] = 8
    caricatures_per_identity: Annotated[int, Field(ge=2)] = 6
    image_size: tuple[Annotated[int, Field(ge=64)], Annotated[int, Field(ge=64)]] = (200, 200)
    #: how far each identity's factors are pushed from the population mean in its caricatures
    exaggeration: tuple[Annotated[float, Field(ge=1.0)], Annotated[float, Field(ge=1.0)]] = (1.5, 2.5)
    #: caricature "artists": each has its own palette, line weight and distortion style
    artists: Annotated[int, Field(ge=1)] = 4
    #: cavi: pairs kept after the protocol's down-sampling (the pair file holds pairs x downsample lines);
    #: webcaricature: test pairs (as many training pairs; the identification files come on top)
    pairs: Annotated[int, Field(ge=2)] = 120
    #: cavi: the down-sampling the pair file is written for, the dataset's `protocol.downsample` (empty: 20, the
    #: original's); webcaricature: 1 (no down-sampling; empty: 1)
    downsample: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> DemoCaricatureSource:
        if self.exaggeration[0] > self.exaggeration[1]:
            raise ValueError(f"exaggeration: {list(self.exaggeration)} must be [low, high] with low <= high")
        if self.pairs < self.n_identities:
            raise ValueError(f"pairs: {self.pairs} pairs cannot cover the {self.n_identities} identities "
                             "(pairs >= n_identities)")
        if self.layout == "webcaricature":
            if self.downsample not in (None, 1):
                raise ValueError(f"downsample: {self.downsample}, but WebCaricature's pair files are not "
                                 "down-sampled: 1 (or leave it empty)")
            if not 3 <= self.n_identities <= 676:
                raise ValueError(f"n_identities: {self.n_identities}; layout webcaricature needs 3..676 (training "
                                 "and test identities, distinct names)")
        return self

    def pair_downsample(self) -> int:
        """The down-sampling of the pair file: ``downsample``, else 20 for cavi (the original's) and 1 otherwise."""
        if self.downsample is not None:
            return self.downsample
        return 20 if self.layout == "cavi" else 1

    def identity_range(self) -> range:
        return range(self.first_identity, self.first_identity + self.n_identities)


Source = Annotated[
    DemoExpressionSource | DemoIdentitySource | DemoCaricatureSource | LfwSource | LicensedSource,
    Field(discriminator="kind"),
]


class ExpectedCounts(_Strict):
    """Counts the published dataset has; the manifest stage reports any difference (it does not fail)."""

    subjects: int | None = None
    sequences: int | None = None
    labelled_sequences: int | None = None
    images: int | None = None


class LabelSetConfig(_Strict):
    """Frame-level labelling of expression sequences (see :mod:`pipeline.data.label_sets`)."""

    classes: list[str]
    neutral: str | None = None
    peak_frames: Annotated[int, Field(ge=1)] = 3
    neutral_frames: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _neutral_is_a_class(self) -> LabelSetConfig:
        if not self.classes:
            raise ValueError("classes: list at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        if self.neutral_frames and self.neutral is None:
            raise ValueError("neutral_frames > 0 needs `neutral` (the class name of neutral frames)")
        if self.neutral is not None and self.neutral not in self.classes:
            raise ValueError(f"neutral class {self.neutral!r} is not in classes {self.classes}")
        return self


#: the label sets of the original protocols by name (docs/method.md §5.1, §5.2): ``datasets.<d>.label_sets.<name>``
#: may name one instead of writing it out
STANDARD_LABEL_SETS: dict[str, LabelSetConfig] = {
    # Oulu-CASIA "Six" (the original's training file): the last 3 frames of every sequence, 1440 images
    "oulu_six": LabelSetConfig(classes=["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"],
                               neutral=None, peak_frames=3, neutral_frames=0),
    # Oulu-CASIA "Seven": + the neutral first frame, 1920 images
    "oulu_seven": LabelSetConfig(classes=["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"],
                                 neutral="Neutral", peak_frames=3, neutral_frames=1),
    # CK+ with the 8 classes as coded (docs/method.md §9.29): 3 peak frames + the neutral first frame, 1308 images
    "ckplus_eight": LabelSetConfig(classes=["neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness",
                                            "surprise"], neutral="neutral", peak_frames=3, neutral_frames=1),
}


def _label_set(value: Any) -> Any:
    """A label set written out, or the name of a standard one (:data:`STANDARD_LABEL_SETS`)."""
    if isinstance(value, str):
        if value not in STANDARD_LABEL_SETS:
            raise ValueError(f"unknown standard label set {value!r}; write it out or use one of "
                             f"{', '.join(STANDARD_LABEL_SETS)}")
        return STANDARD_LABEL_SETS[value]
    return value


LabelSet = Annotated[LabelSetConfig, BeforeValidator(_label_set)]


class LandmarkBox(_Strict):
    """``align.landmark_box``: the crop of ``align_convention: landmarks_box`` around the landmarks' bounding box
    (docs/method.md §5.8): centred on it, ``width`` × its width and ``height`` × its height, clipped to the image."""

    width: Annotated[float, Field(gt=0.0)]
    height: Annotated[float, Field(gt=0.0)]


class CaviProtocolConfig(_Strict):
    """``datasets.<d>.protocol`` of a CaVI dataset: CaVINet's pair file (``testing_1.txt``) and the down-sampling.

    ``pairs`` is relative to the dataset's ``root`` (or absolute)."""

    kind: Literal["cavi"]
    pairs: str
    downsample: Annotated[int, Field(ge=1)]


class WebCariProtocolConfig(_Strict):
    """``datasets.<d>.protocol`` of a WebCaricature dataset: ``folder`` (``EvaluationProtocols``, relative to ``root``,
    or absolute), and relative to it the training and test pair files and the folder of the ``FR_Probe_*`` /
    ``FR_Gallery_*`` files (``<identification>/{C2P,P2C}/``)."""

    kind: Literal["webcaricature"]
    folder: str
    train_pairs: str
    test_pairs: str
    identification: str


CariProtocol = Annotated[CaviProtocolConfig | WebCariProtocolConfig, Field(discriminator="kind")]


class DatasetConfig(_Strict):
    """One entry of ``datasets``: where a dataset lives, how to read it and what it is used for.

    ``label_sets``: the dataset's frame-level label sets by name (a task's ``label`` names one; the folds' expression
    pairs use ``folds.datasets.<d>.pairs.label_set``), each written out or the name of a standard one
    (:data:`STANDARD_LABEL_SETS`: ``oulu_six``, ``oulu_seven``, ``ckplus_eight``). They live in the dataset's own
    entry so that every stage of one dataset tracks only that dataset's label sets: editing CK+'s re-runs only the
    CK+ stages (DVC cannot template ``label_sets.${datasets.${d}.label_set}``).
    """

    reader: Literal["oulu_casia", "ckplus", "lfw", "casia_webface", "msceleb", "cavi", "webcaricature"]
    root: str
    role: Literal["finetune", "pretrain", "eval", "caricature"]
    #: how faces are cut out (pipeline/align/crop.py CONVENTIONS): MTCNN at paper_182_44 / facenet_160_32, or without
    #: detection: resize_only (the whole image resized: the original's CaVI), landmarks_box (a box around the
    #: dataset's landmarks: the original's WebCaricature, factors in `align.landmark_box`)
    align_convention: Literal["paper_182_44", "facenet_160_32", "resize_only", "landmarks_box"] = "paper_182_44"
    source: Source
    #: required (may be ``{}``): DVC tracks these keys, and a params key DVC tracks must exist in the file
    options: dict[str, Any]
    expected: ExpectedCounts
    #: required (may be ``{}``) for datasets with folds, whose stages DVC makes track it
    label_sets: dict[str, LabelSet] = {}
    #: the caricature protocol files (stage cari_split): CaVINet's pair file or WebCaricature's EvaluationProtocols
    protocol: CariProtocol | None = None

    @model_validator(mode="after")
    def _check_options(self) -> DatasetConfig:
        try:
            reader_options(self.reader, self.options)
        except ValueError as exc:
            raise ValueError(f"options: {exc}") from None
        if self.align_convention == "landmarks_box" and self.reader != "webcaricature":
            raise ValueError(f"align_convention: landmarks_box needs a reader with landmark files (webcaricature), "
                             f"not {self.reader}")
        if self.protocol is not None and self.protocol.kind != self.reader:
            raise ValueError(f"protocol.kind: {self.protocol.kind!r} does not fit reader {self.reader!r}")
        if isinstance(self.source, DemoCaricatureSource):
            layout = {"cavi": "cavi", "webcaricature": "webcaricature"}.get(self.reader)
            if self.source.layout != layout:
                raise ValueError(f"source.layout: {self.source.layout!r} is not the layout reader {self.reader!r} "
                                 "reads")
            if isinstance(self.protocol, CaviProtocolConfig) and self.protocol.downsample != \
                    self.source.pair_downsample():
                raise ValueError(f"protocol.downsample: {self.protocol.downsample}, but the demo's pair file is "
                                 f"written for source.downsample {self.source.pair_downsample()}: make them equal")
        return self


def reader_options(reader: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate a reader's ``options`` with the schema the reader owns; return them with defaults filled in."""
    return OPTION_MODELS[reader].parse(options).model_dump()


class ManifestConfig(_Strict):
    check: Literal["decode", "header"] = "decode"
    max_skip_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05


class AlignConfig(_Strict):
    """``align``: MTCNN detection, face choice and crop storage (:mod:`pipeline.align`; docs/method.md §7).

    ``device``/``batch_size``/``workers``/``processes`` change only the speed, not the crops.
    ``processes`` > 1 runs ``torchrun --nproc_per_node=<processes>`` (one process per GPU, disjoint chunks).
    """

    device: Device = "auto"
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 16
    workers: Annotated[int, Field(ge=0, le=256)] = 2
    processes: Annotated[int, Field(ge=1, le=1024)] = 1
    min_face: Annotated[float, Field(ge=12)] = 20
    thresholds: tuple[Annotated[float, Field(gt=0, lt=1)], Annotated[float, Field(gt=0, lt=1)],
                      Annotated[float, Field(gt=0, lt=1)]] = (0.6, 0.7, 0.7)
    factor: Annotated[float, Field(gt=0.1, lt=1)] = 0.709
    nms: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)],
               Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.5, 0.7, 0.7, 0.7)
    resample: Literal["nearest", "area", "bilinear"] = "nearest"
    max_side: Annotated[int, Field(ge=64)] = 4096
    shard_size: Annotated[int, Field(ge=1)] = 4096
    format: Literal["jpeg", "png"] = "jpeg"
    #: the box of ``align_convention: landmarks_box`` (the original WebCaricature's factors)
    landmark_box: LandmarkBox = LandmarkBox(width=1.5, height=1.2)
    quality: Annotated[int, Field(ge=50, le=100)] = 95
    max_failure_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05



class FoldPairsConfig(_Strict):
    """How ``data/folds/<dataset>/fold<k>-pairs.parquet`` is made (:mod:`pipeline.folds`).

    ``kind``: ``expression`` = the seeded 4-type recipe over each fold's test subjects with the dataset's label set
    ``label_set`` (``datasets.<d>.label_sets``; ``required`` expressions are class names of it), except the folds
    listed in ``original_files`` (fold -> an original pair file, paths stripped of ``prefix``); ``lfw`` = the folds
    and pairs of an LFW ``pairs.txt`` (``file``); ``none`` = no pairs (empty tables). Pair files must lie under
    ``data/protocols/`` (a dep of the stage).
    """

    kind: Literal["expression", "lfw", "none"] = "expression"
    label_set: str | None = None
    required: list[str] = ["Happiness", "Surprise"]
    original_files: dict[int, str] = {}
    prefix: str | None = None
    file: str | None = None
    #: the stage fails when more pair-file lines than this fraction do not map to manifest images (or all)
    max_unmatched_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05

    @model_validator(mode="after")
    def _consistent(self) -> FoldPairsConfig:
        if len(set(self.required)) != len(self.required):
            raise ValueError(f"required: repeated expression in {self.required}")
        if self.kind == "expression" and not self.required:
            raise ValueError("required: list at least one expression for kind: expression")
        if self.kind == "expression" and self.label_set is None:
            raise ValueError("label_set: kind: expression needs the dataset's label set whose frames it pairs "
                             "(a key of datasets.<d>.label_sets)")
        if self.kind != "expression" and self.original_files:
            raise ValueError(f"original_files is only used with kind: expression (kind is {self.kind})")
        if self.kind == "lfw" and not self.file:
            raise ValueError("kind: lfw needs `file`, the LFW pairs.txt (e.g. data/protocols/lfw_pairs.txt)")
        if self.kind != "lfw" and self.file:
            raise ValueError(f"file is only used with kind: lfw (kind is {self.kind}); "
                             "for original pair files use original_files: {fold: path}")
        for path in [*self.original_files.values(), *([self.file] if self.file else [])]:
            if not under_protocols(path):
                raise ValueError(f"pair file {path!r} must lie under data/protocols/ (a relative path): the folds "
                                 "stage depends on that folder, so DVC re-runs it when a pair file changes")
        return self


class FoldDatasetConfig(_Strict):
    """``folds.datasets.<name>``: per-dataset fold settings (``test_subjects`` fold indices are 0-based)."""

    test_subjects: dict[int, list[str]] = {}
    exclude_subjects: list[str] = []
    pairs: FoldPairsConfig

    @model_validator(mode="after")
    def _subjects_once(self) -> FoldDatasetConfig:
        owner: dict[str, int] = {}
        for fold, subjects in sorted(self.test_subjects.items()):
            if not subjects:
                raise ValueError(f"test_subjects.{fold}: empty list (remove the fold to assign it automatically)")
            for s in subjects:
                if s in owner:
                    where = f"folds {owner[s]} and {fold}" if owner[s] != fold else f"fold {fold} twice"
                    raise ValueError(f"test_subjects: subject {s!r} is listed for {where}")
                owner[s] = fold
        both = sorted(set(owner) & set(self.exclude_subjects))
        if both:
            raise ValueError(f"subject(s) {both} are both in test_subjects and exclude_subjects")
        if self.pairs.kind == "lfw" and (self.test_subjects or self.exclude_subjects):
            raise ValueError("kind: lfw takes its folds from pairs.txt: leave test_subjects and exclude_subjects "
                             "empty")
        return self


class FoldsConfig(_Strict):
    """``folds``: subject-disjoint k-fold splits and verification pairs (:mod:`pipeline.folds`).

    ``run`` lists the folds downstream per-fold stages run; the folds stage always writes all ``k`` folds.
    """

    k: Annotated[int, Field(ge=2)] = 10
    assignment: Literal["contiguous", "hash"] = "contiguous"
    seed: int = 0
    run: list[Annotated[int, Field(ge=0)]] = [0]
    datasets: dict[str, FoldDatasetConfig] = {}

    @model_validator(mode="after")
    def _indices_below_k(self) -> FoldsConfig:
        bad = [f for f in self.run if f >= self.k]
        if bad:
            raise ValueError(f"run: fold(s) {bad} not in 0..{self.k - 1} (k = {self.k})")
        if len(set(self.run)) != len(self.run):
            raise ValueError(f"run: repeated fold in {self.run}")
        for name, ds in self.datasets.items():
            folds = [*ds.test_subjects, *ds.pairs.original_files]
            bad = sorted({f for f in folds if not 0 <= f < self.k})
            if bad:
                raise ValueError(f"datasets.{name}: fold index(es) {bad} not in 0..{self.k - 1} (k = {self.k})")
        return self


class PretrainConfig(_Strict):
    """``pretrain`` (stage ``pretrain``): identity pretraining of the trunk + identity branch (docs/method.md §4.5).

    ``runtime`` (device, threads, evaluation batch, ``torch.compile``, loader workers, where faces are decoded) is not
    tracked by DVC; ``train`` (:class:`~pipeline.settings.PretrainSettings`) holds everything the model depends on.
    """

    runtime: PretrainRuntime
    train: PretrainSettings


class FinetuneMethod(BaseModel):
    """``finetune.methods.<name>``: ``weighting`` (a strategy of :mod:`pipeline.weighting`) and its options, which
    the strategy's option parser validates against the task set."""

    model_config = ConfigDict(extra="allow", frozen=True)

    weighting: str
    #: this method's epochs instead of ``common.epochs``; ``0`` = no training: the initial (pretrained) model is
    #: evaluated once, as epoch 0 (the paper's "pretrained, no fine-tuning" row)
    epochs: Annotated[int, Field(ge=0)] | None = None

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


_METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class FinetuneConfig(_Strict):
    """``finetune``: the per-(dataset, fold, method) fine-tuning stages ``finetune@<dataset>-<fold>-<method>``.

    ``runtime`` (:class:`~pipeline.settings.RuntimeSettings`) is not tracked by DVC. ``datasets``: the fine-tuning
    datasets of one ``dvc repro`` (each with its folds and its own table section in the report); ``common``
    (:class:`~pipeline.settings.FinetuneSettings`): what every run shares; ``methods``: the weighting methods;
    ``run_methods``: the methods run.
    """

    runtime: RuntimeSettings
    datasets: list[str]
    common: FinetuneSettings
    methods: dict[str, FinetuneMethod] = {}
    run_methods: list[str] = []

    @model_validator(mode="after")
    def _methods(self) -> FinetuneConfig:
        for name in self.methods:
            if not _METHOD_NAME.match(name):
                raise ValueError(f"methods: name {name!r} must be lower-case letters, digits and '_' (it is part of "
                                 "the DVC stage name finetune@<dataset>-<fold>-<method>)")
        unknown = [m for m in self.run_methods if m not in self.methods]
        if unknown:
            raise ValueError(f"run_methods: unknown method(s) {unknown}; defined: {sorted(self.methods)}")
        if len(set(self.run_methods)) != len(self.run_methods):
            raise ValueError(f"run_methods: repeated method in {self.run_methods}")
        repeated = sorted({d for d in self.datasets if self.datasets.count(d) > 1})
        if repeated:
            raise ValueError(f"datasets: {repeated[0]!r} is listed twice")
        return self


#: folders of data/cari/<dataset>/ that are not a method's run
RESERVED_CARI_NAMES = ("split", "pixel_pca")

#: ``cari.methods.<m>.variant: auto``: the dynamic unit's variant for a dataset's reader (docs/method.md §3)
AUTO_VARIANTS = {"cavi": "cavi", "webcaricature": "webcari"}


def cari_method_options(method: FinetuneMethod, reader: str) -> dict[str, Any]:
    """A caricature method's weighting options for a dataset read by ``reader``: ``variant: auto`` becomes the
    variant of the reader's original script (:data:`AUTO_VARIANTS`; ``fer`` for a reader without one)."""
    options = method.options()
    if options.get("variant") == "auto":
        options["variant"] = AUTO_VARIANTS.get(reader, "fer")
    return options


class CariConfig(_Strict):
    """``cari``: the caricature–visual runs ``cari_train@<dataset>-<method>`` (docs/caricature.md).

    ``datasets``: datasets with a caricature ``protocol`` (one split each: stage ``cari_split@<dataset>``);
    ``common`` (:class:`~pipeline.settings.CariSettings`): what every run shares; ``methods``: the weighting methods
    (as ``finetune.methods``; a ``dynamic`` method's ``variant`` may be ``auto``); ``run_methods``: the methods run on
    every dataset (DVC's matrix is a product). The runs compute with ``finetune.runtime``.
    """

    datasets: list[str]
    common: CariSettings
    methods: dict[str, FinetuneMethod]
    run_methods: list[str]

    @model_validator(mode="after")
    def _methods(self) -> CariConfig:
        for name in self.methods:
            if not _METHOD_NAME.match(name):
                raise ValueError(f"methods: name {name!r} must be lower-case letters, digits and '_' (it is part of "
                                 "the DVC stage name cari_train@<dataset>-<method>)")
            if name in RESERVED_CARI_NAMES:
                raise ValueError(f"methods: {name!r} is reserved (data/cari/<dataset>/{name} holds another stage's "
                                 "output): rename the method")
        unknown = [m for m in self.run_methods if m not in self.methods]
        if unknown:
            raise ValueError(f"run_methods: unknown method(s) {unknown}; defined: {sorted(self.methods)}")
        for key, values in (("run_methods", self.run_methods), ("datasets", self.datasets)):
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: repeated entry in {values}")
        return self


class DisjointSource(_Strict):
    """``disjoint.sources`` item: a dataset whose images are labelled for one ``task`` only."""

    dataset: str
    task: str


#: ``disjoint.methods.<m>.mode``
DISJOINT_MODES = ("single", "joint", "alternating")


class DisjointMethod(FinetuneMethod):
    """``disjoint.methods.<name>``: a weighting (as ``finetune.methods``: ``weighting`` and its options) plus how the
    sources are trained (docs/disjoint.md#methods).

    Attributes:
        mode: ``single`` (the sources of ``task`` only: single-task learning) | ``joint`` (every batch mixes the
            sources) | ``alternating`` (epoch ``e`` passes over source ``(e − 1) mod T``).
        task: ``mode: single``: the task trained.
        transfer: keys of ``disjoint.common.transfer`` this method changes (:func:`disjoint_transfer`).
        labels: ``masked`` (each image keeps its source's task only) | ``full`` (the view's hidden labels unmasked:
            the upper bound, demo views only).
    """

    mode: Literal["single", "joint", "alternating"]
    task: str | None = None
    transfer: dict[str, Any] = {}
    labels: Literal["masked", "full"] = "masked"


def disjoint_transfer(common: DisjointSettings, method: DisjointMethod) -> TransferSettings:
    """``common.transfer`` with the method's ``transfer`` keys, validated.

    Raises:
        ValueError: an unknown key or a bad value (pydantic's message, keyed by the transfer field).
    """
    from pydantic import TypeAdapter

    merged = {**to_jsonable_python(common.transfer), **method.transfer}
    try:
        return TypeAdapter(TransferSettings).validate_python(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"transfer.{where}: {err['msg']}" if where else f"transfer: {err['msg']}") from None


class DisjointConfig(_Strict):
    """``disjoint``: multi-task learning on disjoint datasets, stages ``disjoint_train@<fold>-<method>`` and
    ``disjoint_report`` (docs/disjoint.md).

    ``view``: ``demo_halves`` (the training subjects of ``dataset``'s folds hash-split into an identity-only and an
    expression-only half; the masked labels go to a hidden sidecar) | ``sources`` (``sources``: datasets labelled for
    one task each). ``split``: ``folds`` (the folds ``folds`` of ``dataset``) | ``official`` (the datasets' own test
    split: fold 0) | ``kfold_faithful`` (the scripts' ``KFold(n, shuffle=True, random_state=1)`` fold 0: its test set
    is also its validation set). ``common`` (:class:`~pipeline.settings.DisjointSettings`): what every run shares;
    ``methods``; ``run_methods``: the methods run on every fold; ``reference``: the report's reference method. The
    runs compute with ``finetune.runtime``.
    """

    view: Literal["demo_halves", "sources"]
    split: Literal["folds", "official", "kfold_faithful"]
    dataset: str | None = None
    folds: list[Annotated[int, Field(ge=0)]]
    sources: list[DisjointSource] = []
    kfold_splits: dict[Literal["joint", "alternating", "single"], Annotated[int, Field(ge=2)]] = {}
    common: DisjointSettings
    methods: dict[str, DisjointMethod]
    run_methods: list[str]
    #: the report's reference method (paired differences method − reference; stage disjoint_report)
    reference: str

    @model_validator(mode="after")
    def _methods(self) -> DisjointConfig:
        for name in self.methods:
            if not _METHOD_NAME.match(name):
                raise ValueError(f"methods: name {name!r} must be lower-case letters, digits and '_' (it is part of "
                                 "the DVC stage name disjoint_train@<fold>-<method>)")
        unknown = [m for m in self.run_methods if m not in self.methods]
        if unknown:
            raise ValueError(f"run_methods: unknown method(s) {unknown}; defined: {sorted(self.methods)}")
        for key, values in (("run_methods", self.run_methods), ("folds", self.folds)):
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: repeated entry in {values}")
        if not self.folds:
            raise ValueError("folds: at least one fold")
        if self.run_methods and self.reference not in self.run_methods:
            raise ValueError(f"reference: {self.reference!r} is not in run_methods {self.run_methods}")
        if self.view == "demo_halves":
            if self.dataset is None:
                raise ValueError("dataset: view demo_halves halves the folds of a dataset: name it")
            if self.split != "folds":
                raise ValueError(f"split: view demo_halves uses the folds of {self.dataset!r} (split: folds), "
                                 f"not {self.split}")
            if self.sources:
                raise ValueError("sources: view demo_halves makes its own sources: leave sources empty")
        else:
            if len(self.sources) < 2:
                raise ValueError("sources: view sources needs at least two (dataset, task) entries")
            if self.split == "folds":
                raise ValueError("split: view sources has no folds of one dataset: use official or kfold_faithful")
            if self.folds != [0]:
                raise ValueError(f"folds: split {self.split} has one fold, 0; got {self.folds}")
            pairs = [(s.dataset, s.task) for s in self.sources]
            if len(set(pairs)) != len(pairs):
                raise ValueError(f"sources: repeated (dataset, task) in {pairs}")
        if self.split == "kfold_faithful":
            missing = [m for m in ("single", "joint", "alternating") if m not in self.kfold_splits]
            if missing:
                raise ValueError(f"kfold_splits: split kfold_faithful needs n per mode; missing {missing}")
        for name, method in self.methods.items():
            try:
                disjoint_transfer(self.common, method)
            except ValueError as exc:
                raise ValueError(f"methods.{name}.{exc}") from None
            if (method.mode == "single") != (method.task is not None):
                raise ValueError(f"methods.{name}.task: give the task for mode single, and only then")
            if method.labels == "full" and self.view != "demo_halves":
                raise ValueError(f"methods.{name}.labels: full (the hidden labels unmasked) needs view demo_halves")
        return self


class PixelBaselineConfig(_Strict):
    """``pixel_baseline``: the raw-pixel PCA baseline (stage ``pixel_baseline@<dataset>-<fold>``;
    pipeline/evaluation/pixel_pca).

    The fold's centre crops (``finetune.common.crop.size``) resized to ``size`` px, colour or ``grey``, standardised
    per image; PCA with ``components`` (optionally ``whiten``) fitted on the training images; each classification
    task of the task set from a logistic regression (inverse regularisation ``probe_c``) on the training projections.
    """

    size: Annotated[int, Field(ge=4, le=512)] = 32
    grey: bool = False
    components: Annotated[int, Field(ge=1)] = 64
    whiten: bool = False
    probe_c: Annotated[float, Field(gt=0.0)] = 1.0


class ReportConfig(_Strict):
    """``report``: the results tables and figures (stage ``report``; pipeline/report).

    Per dataset of ``finetune.datasets``, reads the metrics of every fold in ``folds.run`` × method in
    ``finetune.run_methods`` (and the pixel baseline when ``pixel_baseline``). ``reference``: the method every other
    is compared with (paired differences over folds, a percentile bootstrap of ``bootstrap`` resamples at
    ``confidence``, seeded by ``seed``). ``val_far``: the FAR of the VAL column (one of
    ``finetune.common.protocol.far_targets``). ``curves_methods`` on ``curves_fold``
    (default: the first of ``folds.run``): the weight/loss figure (methods not in ``run_methods`` are left out).
    """

    reference: str = "dynamic"
    val_far: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-3
    bootstrap: Annotated[int, Field(ge=100)] = 10000
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    seed: int = 0
    pixel_baseline: bool = True
    curves_fold: Annotated[int, Field(ge=0)] | None = None
    curves_methods: list[str] = ["dynamic", "naive_dynamic"]


class Params(_Strict):
    """The whole ``params.yaml``."""

    base: BaseConfig = BaseConfig()
    demo: DemoConfig = DemoConfig()
    datasets: dict[str, DatasetConfig]
    manifest: ManifestConfig = ManifestConfig()
    align: AlignConfig = AlignConfig()
    folds: FoldsConfig = FoldsConfig()
    task_sets: dict[str, TaskSetSettings] = {}
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    pixel_baseline: PixelBaselineConfig = PixelBaselineConfig()
    report: ReportConfig = ReportConfig()
    cari: CariConfig | None = None
    disjoint: DisjointConfig | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        for name, ds in self.datasets.items():
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"dataset name {name!r}: use letters, digits, '_' and '-' only")
            if isinstance(ds.source, LicensedSource):
                for key, value in (("root", ds.root), ("source.tsv", ds.source.tsv)):
                    if value is not None and _inside_generated(value):
                        raise ValueError(
                            f"datasets.{name}.{key} = {value!r} lies in a folder the pipeline writes and deletes "
                            f"({', '.join(map(str, GENERATED))}): keep licensed data elsewhere")
        demo = [(n, d.source.identity_range()) for n, d in self.datasets.items()
                if isinstance(d.source, (DemoExpressionSource, DemoIdentitySource, DemoCaricatureSource))]
        for i, (na, ra) in enumerate(demo):
            for nb, rb in demo[i + 1:]:
                if ra.start < rb.stop and rb.start < ra.stop:
                    raise ValueError(
                        f"demo datasets {na!r} and {nb!r} share identities "
                        f"[{max(ra.start, rb.start)}, {min(ra.stop, rb.stop)}): "
                        "give them disjoint first_identity ranges"
                    )
        return self

    @model_validator(mode="after")
    def _folds_cross_checks(self) -> Params:
        """``folds.datasets`` name datasets, and expression pairs name classes of one of the dataset's label sets."""
        for name, fd in self.folds.datasets.items():
            where = f"folds.datasets.{name}"
            if name not in self.datasets:
                raise ValueError(f"{where}: unknown dataset {name!r} (not in datasets)")
            if "label_sets" not in self.datasets[name].model_fields_set:
                raise ValueError(f"datasets.{name}.label_sets: missing key (a dataset with folds needs it, {{}} for "
                                 "none: its stages track it)")
            if fd.pairs.kind != "expression":
                continue
            sets = self.datasets[name].label_sets
            ls = sets.get(fd.pairs.label_set or "")
            if ls is None:
                raise ValueError(f"{where}.pairs.label_set: {fd.pairs.label_set!r} is not a label set of dataset "
                                 f"{name!r} (datasets.{name}.label_sets: {', '.join(sets) or 'none'})")
            allowed = [c for c in ls.classes if c != ls.neutral]
            bad = [r for r in fd.pairs.required if r not in allowed]
            if bad:
                raise ValueError(f"{where}.pairs.required: unknown expression(s) {bad}; label set "
                                 f"{fd.pairs.label_set!r} has {allowed}")
        return self

    @model_validator(mode="after")
    def _pretrain_cross_checks(self) -> Params:
        pt = self.pretrain.train
        if pt.dataset not in self.datasets:
            raise ValueError(f"pretrain.train.dataset: unknown dataset {pt.dataset!r} (not in datasets)")
        vd = pt.verification.dataset
        if vd not in self.folds.datasets:
            raise ValueError(f"pretrain.train.verification.dataset: {vd!r} has no fold settings (folds.datasets)")
        bad = [f for f in pt.verification.folds if f >= self.folds.k]
        if bad:
            raise ValueError(f"pretrain.train.verification.folds: {pt.verification.folds} must be folds in "
                             f"0..{self.folds.k - 1}")
        return self

    @model_validator(mode="after")
    def _finetune_cross_checks(self) -> Params:
        """Every fine-tuning dataset has folds and the labels its task set needs; every method run serves the set."""
        from pipeline.weighting.options import parse_weighting

        ft = self.finetune
        name = ft.common.task_set
        task_set = self.task_sets.get(name)
        if task_set is None:
            raise ValueError(f"finetune.common.task_set: unknown task set {name!r}; task_sets defines "
                             f"{', '.join(self.task_sets) or 'none'}")
        for d in ft.datasets:
            if d not in self.datasets:
                raise ValueError(f"finetune.datasets: unknown dataset {d!r} (not in datasets)")
            if d not in self.folds.datasets:
                raise ValueError(f"finetune.datasets: {d!r} has no fold settings (folds.datasets)")
            label_sets = self.datasets[d].label_sets
            _check_labels(name, task_set, d, label_sets)
        for method in ft.run_methods:  # a method that is not run need not fit this task set
            cfg = ft.methods[method]
            try:
                parse_weighting(cfg.weighting, cfg.options(), task_set.names)
            except ValueError as exc:
                raise ValueError(f"finetune.methods.{method}: {exc} (task set {name!r}: "
                                 f"{', '.join(task_set.names)})") from None
        return self

    @model_validator(mode="after")
    def _cari_cross_checks(self) -> Params:
        """Caricature datasets have a protocol, the task set exists and fits the center policy, and every method run
        serves the task set on every dataset."""
        from pipeline.weighting.options import parse_weighting

        ca = self.cari
        if ca is None:
            return self
        name = ca.common.task_set
        task_set = self.task_sets.get(name)
        if task_set is None:
            raise ValueError(f"cari.common.task_set: unknown task set {name!r}; task_sets defines "
                             f"{', '.join(self.task_sets) or 'none'}")
        for d in ca.datasets:
            if d not in self.datasets:
                raise ValueError(f"cari.datasets: unknown dataset {d!r} (not in datasets)")
            if self.datasets[d].protocol is None:
                raise ValueError(f"cari.datasets: dataset {d!r} has no caricature protocol (datasets.{d}.protocol)")
            _check_labels(name, task_set, d, self.datasets[d].label_sets)
        bad = [t for t in ca.common.centers.tasks if t not in task_set.tasks]
        if bad:
            raise ValueError(f"cari.common.centers.tasks: {bad} are not tasks of task set {name!r} "
                             f"({', '.join(task_set.names)})")
        first = task_set.names[0]
        if task_set.tasks[first].center is None:
            raise ValueError(f"task_sets.{name}.tasks.{first}.center: the center policy (cari.common.centers) takes "
                             "factor and alpha from the first task's center block: write one")
        if ca.common.centers.policy == "shared_b1" and first not in ca.common.centers.tasks:
            raise ValueError(f"cari.common.centers.tasks: policy shared_b1 shares the matrix of {first!r}, which "
                             "must be listed")
        for method in ca.run_methods:
            cfg = ca.methods[method]
            for d in ca.datasets:
                try:
                    parse_weighting(cfg.weighting, cari_method_options(cfg, self.datasets[d].reader), task_set.names)
                except ValueError as exc:
                    raise ValueError(f"cari.methods.{method}: {exc} (task set {name!r}: "
                                     f"{', '.join(task_set.names)})") from None
        return self

    @model_validator(mode="after")
    def _disjoint_cross_checks(self) -> Params:
        """The disjoint view names datasets with the labels of its task set, folds exist, the sources' tasks are
        tasks of the set, and every method run serves the set."""
        from pipeline.weighting.options import parse_weighting

        dj = self.disjoint
        if dj is None:
            return self
        name = dj.common.task_set
        task_set = self.task_sets.get(name)
        if task_set is None:
            raise ValueError(f"disjoint.common.task_set: unknown task set {name!r}; task_sets defines "
                             f"{', '.join(self.task_sets) or 'none'}")
        if dj.view == "demo_halves":
            d = dj.dataset
            if d not in self.datasets:
                raise ValueError(f"disjoint.dataset: unknown dataset {d!r} (not in datasets)")
            if d not in self.folds.datasets:
                raise ValueError(f"disjoint.dataset: {d!r} has no fold settings (folds.datasets)")
            _check_labels(name, task_set, d, self.datasets[d].label_sets)
            bad = [f for f in dj.folds if f >= self.folds.k]
            if bad:
                raise ValueError(f"disjoint.folds: {dj.folds} must be folds in 0..{self.folds.k - 1}")
            if len(task_set.names) != 2:
                raise ValueError(f"disjoint.view: demo_halves splits subjects into two halves, one per task; task "
                                 f"set {name!r} has {len(task_set.names)} tasks")
        for i, src in enumerate(dj.sources):
            if src.dataset not in self.datasets:
                raise ValueError(f"disjoint.sources.{i}.dataset: unknown dataset {src.dataset!r} (not in datasets)")
            if src.task not in task_set.tasks:
                raise ValueError(f"disjoint.sources.{i}.task: {src.task!r} is not a task of task set {name!r} "
                                 f"({', '.join(task_set.names)})")
        if dj.sources:
            missing = [t for t in task_set.names if t not in {s.task for s in dj.sources}]
            if missing:
                raise ValueError(f"disjoint.sources: no source labels task(s) {missing} of task set {name!r}")
        for m, cfg in dj.methods.items():
            if cfg.task is not None and cfg.task not in task_set.tasks:
                raise ValueError(f"disjoint.methods.{m}.task: {cfg.task!r} is not a task of task set {name!r} "
                                 f"({', '.join(task_set.names)})")
        for m in dj.run_methods:
            cfg = dj.methods[m]
            try:
                parse_weighting(cfg.weighting, cfg.options(), task_set.names)
            except ValueError as exc:
                raise ValueError(f"disjoint.methods.{m}: {exc} (task set {name!r}: "
                                 f"{', '.join(task_set.names)})") from None
        return self

    @model_validator(mode="after")
    def _report_cross_checks(self) -> Params:
        rp, ft = self.report, self.finetune
        if not ft.run_methods:
            return self
        if rp.reference not in ft.run_methods:
            raise ValueError(f"report.reference: {rp.reference!r} is not in finetune.run_methods {ft.run_methods}")
        targets = ft.common.protocol.far_targets
        if not any(abs(rp.val_far - f) <= 1e-12 for f in targets):
            raise ValueError(f"report.val_far: {rp.val_far:g} is not one of finetune.common.protocol.far_targets "
                             f"{list(targets)}")
        unknown = [m for m in rp.curves_methods if m not in ft.methods]
        if unknown:
            raise ValueError(f"report.curves_methods: unknown method(s) {unknown}; defined: {sorted(ft.methods)}")
        if rp.curves_fold is not None and rp.curves_fold not in self.folds.run:
            raise ValueError(f"report.curves_fold: {rp.curves_fold} is not in folds.run {self.folds.run}")
        return self


def _check_labels(name: str, task_set: TaskSetSettings, dataset: str, label_sets: dict[str, Any]) -> None:
    """Every task's ``label`` is a manifest label column, an identity of one modality or a label set of ``dataset``.

    Raises:
        ValueError: naming the task's key.
    """
    for task, spec in task_set.tasks.items():
        if spec.label not in LABEL_COLUMNS and spec.label not in MODALITY_LABELS and spec.label not in label_sets:
            raise ValueError(
                f"task_sets.{name}.tasks.{task}.label: {spec.label!r} is neither a manifest label column "
                f"({', '.join(LABEL_COLUMNS)}), nor an identity of one modality ({', '.join(MODALITY_LABELS)}), "
                f"nor a label set of dataset {dataset!r} (datasets.{dataset}.label_sets: "
                f"{', '.join(label_sets) or 'none'})")


def _inside_generated(path: str) -> bool:
    """Whether ``path`` (relative to the repo root, or absolute) is inside one of :data:`pipeline.paths.GENERATED`."""
    p = Path(path).expanduser()
    cwd = Path.cwd()
    p = (p if p.is_absolute() else cwd / p).resolve()
    return any(p == (cwd / d).resolve() or (cwd / d).resolve() in p.parents for d in GENERATED)


def _format_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key path."""
    lines = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        # pydantic puts the discriminator value of `source` into the path (datasets.x.source.lfw.url): drop it
        parts = [p for i, p in enumerate(parts)
                 if not (i > 0 and parts[i - 1] in ("source", "protocol") and p in _UNION_TAGS)]
        loc = ".".join(parts)
        msg = err["msg"]
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key (misspelled?)"
        elif err["type"] == "missing":
            msg = "missing key"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(lines)


_UNION_TAGS = {"demo_expression", "demo_identity", "demo_caricature", "lfw", "licensed", "cavi", "webcaricature"}


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        ParamsError: the file is missing, is not YAML, or does not match the schema (message names the keys).
    """
    path = Path(path)
    try:
        raw = _load_yaml(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    except ValueError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(exc, str(path))) from None


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing a key given twice in one mapping (one parse: the node tree is checked,
    then constructed)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _refuse_duplicate_keys(node, "")
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(node: yaml.Node | None, where: str) -> None:
    """A key given twice in one mapping is an error (YAML loaders silently keep the last one)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            dotted = f"{where}.{name}" if where else name
            if name in seen:
                raise ValueError(f"{dotted}: key given twice (line {key.start_mark.line + 1}); YAML would keep only "
                                 "the last one")
            seen.add(name)
            _refuse_duplicate_keys(value, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{where}.{i}")


def plain(value: Any) -> Any:
    """A params value (pydantic model, settings dataclass, list, mapping) as plain JSON-able data (pydantic's own
    serialisation, as ``model_dump(mode="json")`` writes a model)."""
    return to_jsonable_python(value)


class StageParams:
    """The sections of :class:`Params` one stage declared (``dvc.yaml`` ``params:``), and nothing else.

    ``declared`` holds dotted section names such as ``"demo"`` or ``"datasets.demo_oulu"``. Reading a section that is
    not declared (or not below a declared one) raises ``KeyError``: DVC would not re-run the stage when it changes.
    """

    def __init__(self, params: Params, declared: list[str]):
        self._params = params
        self.declared = list(declared)

    def get(self, dotted: str) -> Any:
        if not any(dotted == d or dotted.startswith(d + ".") for d in self.declared):
            raise KeyError(f"section {dotted!r} is not declared by this stage (declared: {self.declared})")
        node: Any = self._params
        for part in dotted.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return node

    def as_flat_dict(self) -> dict[str, Any]:
        """Declared sections flattened to ``{"a.b.c": value}`` (for MLflow params)."""
        out: dict[str, Any] = {}
        for d in self.declared:
            _flatten(plain(self.get(d)), d, out)
        return out


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}", out)
    else:
        out[prefix] = value
