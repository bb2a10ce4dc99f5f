"""The learned screening classifier: COVID-19 vs other pneumonia vs no pneumonia.

Design (the thesis' plan, issue 8):

* **Network** (:class:`SliceClassifier`): the encoder of the project's own
  segmentation UNet (:class:`ctscreen.inference.nets.UNet`, same layer names, so
  the shipped ``unet.pt`` encoder initialises it: transfer learning without hub
  weights), global average + max pooling of the bottleneck, a 128-d embedding
  and either a **feature-normalised softmax head** (cosine classifier with a
  learned scale, NormFace - Wang et al., ACM MM 2017) or a plain linear head.
* **Intensity contract**: one slice goes in as ``[0, 1]`` grey, exactly as the
  segmentation gets it (:mod:`ctscreen.inference.preprocess`): HU through the
  calibrated window ``[-1080, 255]`` and the thorax crop in the app, an 8-bit
  lung-window image / 255 in training and evaluation; then a resize to the
  classifier's input size (192 px for the shipped model).
* **Study level** (:func:`study_probabilities`): only lung-containing slices
  are scored (at most :data:`MAX_STUDY_SLICES`, lesion slices first), a lesion
  slice by its *lesion-focus view* (:func:`focus_box`: a square round the
  slice's largest lesion piece, the way a paper figure frames a finding), and the
  slice scores are pooled with attention over the lesion slices (weights =
  lesion area of the slice, in the spirit of Xu et al. 2020's location
  attention), falling back to the mean of the top-k slice scores when the
  segmentation found no lesion. With a single network every slice score averages
  the slice and its left-right mirror (flip TTA); an ensemble
  (:class:`EnsembleClassifier`, written by ``ctscreen ensemble-classifier``)
  averages its members instead.

Three study probabilities, honestly derived (see :func:`burden_pneumonia_probability`):

* with the shipped **binary** model (``covid19`` vs ``non_covid``)::

      p_pneumonia = 1 / (1 + exp(-(ln(b) - ln(B0)) / W))  # b = lesion % of lung volume
      covid19         = p_pneumonia * p_covid            # p_covid = pooled slice P(COVID)
      other_pneumonia = p_pneumonia * (1 - p_covid)
      no_pneumonia    = 1 - p_pneumonia

  i.e. *whether* there is pneumonia comes from the segmentation's lesion
  burden (noise floor ``B0`` = :data:`BURDEN_FLOOR_PERCENT`), *which kind*
  from the classifier; "other pneumonia" is "pneumonia that the COVID-vs-rest
  classifier does not call COVID", not a trained influenza-A class.
* with a **three-way** model trained by a hospital (``ctscreen train-classifier``
  on ``covid19/``, ``influenza_a/``, ``normal/`` ...), the pooled class
  probabilities are used directly; its no-pneumonia probability is averaged
  with the burden-derived one so it agrees with the segmentation, and the
  pneumonia classes share the rest in the model's proportions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctscreen.errors import ModelLoadError
from ctscreen.inference import nets
from ctscreen.inference.device import resolve_device
from ctscreen.imaging.lesions import FOCUS_SIDE, focus_box  # noqa: F401 - re-exported
from ctscreen.inference.preprocess import hu_to_unit, thorax_box

FORMAT = "ctscreen-classifier/1"
MODELS_DIR = Path(__file__).resolve().parents[1] / "resources" / "models"
DEFAULT_NAME = "classifier"
CLASSES_BINARY = ("covid19", "non_covid")
STUDY_CLASSES = ("covid19", "other_pneumonia", "no_pneumonia")
#: Side of the classifier's square input (pixels) unless the model file says otherwise.
INPUT_SIZE = 192
try:  # the RSNA rules' noise floor, so "no pneumonia" and category "negative" share one threshold
    from ctscreen.imaging.screening import NOISE_FLOOR_PERCENT as _FLOOR
except ImportError:  # pragma: no cover - rules module absent
    _FLOOR = 0.5
#: Lesion burden (% of lung volume) at which P(pneumonia) = 0.5: the noise floor of the
#: RSNA rules (:data:`ctscreen.imaging.screening.NOISE_FLOOR_PERCENT`, 0.5 %; the shipped
#: segmentation marks about 0.1 % of a normal study's lung as lesion).
BURDEN_FLOOR_PERCENT = float(_FLOOR)
#: Width of the logistic in ln(burden): P(pneumonia) = 0.12 at floor / 2.7, 0.88 at floor x 2.7
#: (0.04 at a normal study's 0.1 % with the 0.5 % floor).
BURDEN_WIDTH = 0.5
#: At most this many slices are scored per study (the 3-s budget on 2 CPU cores).
MAX_STUDY_SLICES = 40
#: A slice counts as lung-containing when its lung mask covers this share of the slice.
MIN_LUNG_FRACTION = 0.01
#: Slices with at least this many lesion pixels are "lesion slices" for the attention.
MIN_LESION_PIXELS = 20

# Folder names -> canonical class keys.
_ALIASES = {
    "covid": "covid19", "covid19": "covid19", "covid-19": "covid19", "covid_19": "covid19", "p": "covid19",
    "noncovid": "non_covid", "non_covid": "non_covid", "non-covid": "non_covid", "non covid": "non_covid",
    "normal": "no_pneumonia", "healthy": "no_pneumonia", "no_pneumonia": "no_pneumonia", "none": "no_pneumonia",
    "cap": "other_pneumonia", "other": "other_pneumonia", "other_pneumonia": "other_pneumonia",
}


def canonical_class(folder_name: str) -> str:
    """A class folder name (``COVID``, ``NonCOVID``, ``normal``, ``influenza_a``) -> class key."""
    s = folder_name.strip().lower()
    return _ALIASES.get(s, s.replace(" ", "_").replace("-", "_"))


def order_classes(names: list[str]) -> tuple[str, ...]:
    """Canonical class order: ``covid19`` first, the no-pneumonia class last, others sorted between."""
    names = sorted(set(names))
    first = [n for n in names if n == "covid19"]
    last = [n for n in names if n in ("no_pneumonia", "non_covid")]
    mid = [n for n in names if n not in first and n not in last]
    return tuple(first + mid + last)


class CosineHead(nn.Module):
    """Feature-normalised softmax (NormFace): ``logits = s * cos(f, w_c)``, ``s`` learned (log-parametrised)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 10.0, learn_scale: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        log_s = torch.tensor(math.log(scale), dtype=torch.float32)
        if learn_scale:
            self.log_scale = nn.Parameter(log_s)
        else:
            self.register_buffer("log_scale", log_s)

    @property
    def scale(self) -> float:
        return float(self.log_scale.detach().exp())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


class SliceClassifier(nn.Module):
    """UNet encoder (same module names as :class:`nets.UNet`'s ``enc``) + pooled embedding + head.

    Parameters
    ----------
    num_classes : int
    channels : tuple of int
        Encoder widths per level (those of the segmentation UNet for transfer).
    head : {"cosine", "linear"}
    embed_dim : int
    dropout : float
        Dropout before the embedding.
    """

    def __init__(self, num_classes: int = 2, channels: tuple[int, ...] = (16, 32, 64, 128, 256),
                 head: str = "cosine", embed_dim: int = 128, dropout: float = 0.3, enc_dropout: float = 0.1,
                 scale: float = 10.0, learn_scale: bool = True):
        super().__init__()
        if head not in ("cosine", "linear"):
            raise ValueError(f"head must be 'cosine' or 'linear', not {head!r}")
        self.config = {"num_classes": num_classes, "channels": list(channels), "head": head,
                       "embed_dim": embed_dim, "dropout": dropout, "enc_dropout": enc_dropout,
                       "scale": scale, "learn_scale": learn_scale}
        self.enc = nn.ModuleList()
        c_prev = 1
        for i, c in enumerate(channels):
            self.enc.append(nets._DoubleConv(c_prev, c, enc_dropout if i == len(channels) - 1 else 0.0))
            c_prev = c
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Linear(2 * c_prev, embed_dim)
        self.head = CosineHead(embed_dim, num_classes, scale, learn_scale) if head == "cosine" \
            else nn.Linear(embed_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
        return x

    def embedding(self, fmap: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        return self.embed(self.drop(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(self.features(x)))

    def cam_layers(self) -> dict[str, nn.Module]:
        """Grad-CAM layers, the bottleneck (default) first."""
        n = len(self.enc)
        return {f"encoder{n - i}": self.enc[n - 1 - i] for i in range(min(3, n))}

    def load_segmentation_encoder(self, unet_state: dict[str, torch.Tensor]) -> int:
        """Copy the ``enc.*`` weights of a segmentation UNet state dict; returns the number of tensors copied."""
        own = self.state_dict()
        take = {k: v.float() if v.is_floating_point() else v for k, v in unet_state.items()
                if k.startswith("enc.") and k in own and own[k].shape == v.shape}
        own.update(take)
        self.load_state_dict(own)
        return len(take)


class EnsembleClassifier(nn.Module):
    """Several :class:`SliceClassifier` members (same classes) as one network.

    The output is the log of the members' mean softmax, so ``softmax(forward(x))`` is the
    averaged probability that :func:`predict_batches` returns, and a Grad-CAM of one class
    explains the ensemble's score (:func:`classifier_cam` sums the members' maps).
    ``sizes`` are the members' own input sides: the ensemble takes the largest, and a
    member trained smaller gets the input resized (bilinear with antialiasing, close to
    the area resize it was trained on).
    """

    def __init__(self, configs: list[dict[str, Any]], sizes: list[int] | None = None):
        super().__init__()
        if len(configs) < 2:
            raise ValueError("an ensemble needs at least two member configurations")
        self.members = nn.ModuleList(build(c) for c in configs)
        n = {m.config["num_classes"] for m in self.members}
        if len(n) != 1:
            raise ValueError(f"ensemble members disagree on the number of classes: {sorted(n)}")
        self.sizes = [int(v) for v in (sizes or [INPUT_SIZE] * len(configs))]
        if len(self.sizes) != len(configs):
            raise ValueError("one input size per ensemble member expected")
        self.config = {"ensemble": [dict(m.config) for m in self.members], "sizes": list(self.sizes)}

    @property
    def input_size(self) -> int:
        return max(self.sizes)

    def member_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        s = self.sizes[i]
        if x.shape[-1] == s and x.shape[-2] == s:
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([F.softmax(m(self.member_input(x, i)).float(), dim=1)
                         for i, m in enumerate(self.members)]).mean(dim=0)
        return torch.log(p.clamp_min(1e-12))

    def cam_layers(self) -> dict[str, nn.Module]:
        """The layer names (those of every member; the modules are the first member's)."""
        return self.members[0].cam_layers()


def cam_modules(net: nn.Module, layer: str | None = None) -> list[nn.Module]:
    """The module(s) a classifier Grad-CAM hooks: one for a single network, one per ensemble member."""
    nets_ = list(net.members) if isinstance(net, EnsembleClassifier) else [net]
    out = []
    for m in nets_:
        layers = m.cam_layers()
        if layer and layer not in layers:
            raise ValueError(f"classifier layer {layer!r} is not one of {', '.join(layers)}")
        out.append(layers[layer] if layer else next(iter(layers.values())))
    return out


def build(config: dict[str, Any] | None) -> nn.Module:
    cfg = dict(config or {})
    if "ensemble" in cfg:
        return EnsembleClassifier(list(cfg["ensemble"]), cfg.get("sizes"))
    if "channels" in cfg:
        cfg["channels"] = tuple(cfg["channels"])
    return SliceClassifier(**cfg)


@dataclass
class LoadedClassifier:
    """A classifier ready for inference."""

    name: str
    version: str
    classes: tuple[str, ...]
    net: nn.Module  # SliceClassifier or EnsembleClassifier
    device: torch.device
    input_size: int = INPUT_SIZE
    card: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def positive_index(self) -> int:
        return self.classes.index("covid19") if "covid19" in self.classes else 0


def default_path() -> Path:
    return MODELS_DIR / f"{DEFAULT_NAME}.pt"


def classifier_path(name_or_path: str | Path | None) -> Path:
    """``None``/``""`` -> the shipped default; a shipped name; else a file path."""
    if name_or_path is None or str(name_or_path) == "":
        p = default_path()
    elif (MODELS_DIR / f"{name_or_path}.pt").exists() and not str(name_or_path).endswith(".pt"):
        p = MODELS_DIR / f"{name_or_path}.pt"
    else:
        p = Path(str(name_or_path)).expanduser()
    if not p.exists():
        raise ModelLoadError(
            f"classifier weights not found: {p} - train one with 'ctscreen train-classifier --data DIR "
            f"--out {default_path()}' or name a file written by it")
    return p


def save_classifier(net: nn.Module, classes: tuple[str, ...], path: str | Path, card: dict[str, Any]) -> Path:
    """Write weights (float16) + card atomically (``torch.save`` of plain tensors and dicts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
             for k, v in net.state_dict().items()}
    blob = {"format": FORMAT, "config": net.config, "classes": list(classes), "state_dict": state, "card": card}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_classifier(name_or_path: str | Path | None = None, device: str | torch.device = "auto") -> LoadedClassifier:
    """Load the shipped classifier (``None``), a shipped name or a file written by ``train-classifier``.

    Raises
    ------
    ModelLoadError
        Missing, unreadable, or not a ctscreen classifier.
    """
    path = classifier_path(name_or_path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot read classifier weights ({exc.__class__.__name__}: {exc}); "
                             "the file is corrupt or not a ctscreen classifier - retrain it") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: not a ctscreen classifier file (expected format {FORMAT}); "
                             "segmentation models load with --model of 'ctscreen analyze'")
    try:
        net = build(blob.get("config"))
        net.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in blob["state_dict"].items()})
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: weights do not match the classifier architecture ({exc})") from exc
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    # channels-last: oneDNN's faster convolution layout (a 4-member ensemble scored P001's 40 slices
    # 1.4x faster on this 2-core CPU); the numbers are the same up to float rounding
    net.eval().to(dev).to(memory_format=torch.channels_last)
    card = blob.get("card") or {}
    classes = tuple(blob.get("classes") or CLASSES_BINARY)
    version = str(card.get("version") or f"classifier-{str(card.get('git_commit', 'unknown'))[:8]}")
    return LoadedClassifier(name=path.stem, version=version, classes=classes, net=net, device=dev,
                            input_size=int(net.input_size if isinstance(net, EnsembleClassifier)
                                           else card.get("input_size", INPUT_SIZE)), card=card, path=str(path))


# ---------------------------------------------------------------- input

def unit_to_input(unit: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] grey image (any size) -> ``(size, size)`` float32 (area when shrinking)."""
    import cv2

    unit = np.asarray(unit, dtype=np.float32)
    interp = cv2.INTER_AREA if min(unit.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(unit, (size, size), interpolation=interp)


def read_gray_image(path: str | Path) -> np.ndarray:
    """An 8-bit PNG/JPG (grey, RGB or RGBA) -> 2-D float32 in [0, 1]; ValueError naming the file if unreadable."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None or img.size == 0:
        raise ValueError(f"{path}: not a readable PNG/JPG image - remove it or convert it")
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return img.astype(np.float32) / 255.0


def hu_slices_to_input(hu_slices: np.ndarray, size: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """HU slices ``(n, y, x)`` -> ``(n, 1, size, size)``: thorax crop, calibrated window, resize."""
    hu_slices = np.asarray(hu_slices)
    if hu_slices.ndim == 2:
        hu_slices = hu_slices[None]
    if box is None:
        box = thorax_box(hu_slices)
    y0, y1, x0, x1 = box
    out = np.empty((len(hu_slices), 1, size, size), np.float32)
    for i, s in enumerate(hu_slices):
        out[i, 0] = unit_to_input(hu_to_unit(s[y0:y1, x0:x1]), size)
    return out


#: How a single image is scored (``evaluate-classifier``): ``both`` = the mean of the whole image
#: and its lesion-focus view (a two-view test-time augmentation). On UCSD val it beat the whole
#: image alone for all seven models measured (shipped ensemble AUC 0.957 vs 0.945 with the flip;
#: ``benchmarks/study_views.py``). A figure is already framed on its finding, so the whole image
#: keeps half the weight; a study slice is not, and is scored by the lesion view alone wherever
#: it has a lesion (:func:`study_probabilities`).
IMAGE_VIEW = "both"
def lesion_focus_inputs(hu_slices: np.ndarray, lesion_slices: np.ndarray, size: int,
                        box: tuple[int, int, int, int], side: float | None = None) -> tuple[np.ndarray, list[int]]:
    """Zoomed views of the lesions: ``(m, 1, size, size)`` for the ``m`` slices (their indices
    returned) that hold a lesion inside ``box`` - the view a model trained with
    ``--lesion-crops`` also learned from."""
    xs, keep = [], []
    for i, (s, les) in enumerate(zip(hu_slices, lesion_slices)):
        fb = focus_box(les, box, side)
        if fb is None:
            continue
        a0, a1, b0, b1 = fb
        xs.append(unit_to_input(hu_to_unit(s[a0:a1, b0:b1]), size)[None])
        keep.append(i)
    return (np.stack(xs).astype(np.float32) if xs else np.zeros((0, 1, size, size), np.float32)), keep


def learned_lesion_crops(clf: "LoadedClassifier") -> bool:
    """Whether the model was trained on lesion-focus views (``train-classifier --lesion-crops``;
    an ensemble only when every member was), so an image is scored by both views."""
    card = clf.card or {}
    members = card.get("members")
    if members:
        return all(float(m.get("lesion_crops", 0) or 0) > 0 for m in members)
    return float(card.get("lesion_crops", 0) or 0) > 0


@torch.no_grad()
def predict_batches(clf: LoadedClassifier, x: np.ndarray, batch_size: int = 16, tta: bool = False) -> np.ndarray:
    """``(n, 1, S, S)`` inputs -> ``(n, n_classes)`` softmax probabilities (optional left-right flip TTA)."""
    out = np.zeros((len(x), len(clf.classes)), np.float32)
    for i in range(0, len(x), batch_size):
        t = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(clf.device)
        t = t.contiguous(memory_format=torch.channels_last)
        p = F.softmax(clf.net(t).float(), dim=1)
        if tta:
            p = 0.5 * (p + F.softmax(clf.net(torch.flip(t, dims=[3])).float(), dim=1))
        out[i:i + batch_size] = p.cpu().numpy()
    return out


def slice_probabilities(clf: LoadedClassifier, hu_slices: np.ndarray, lung: np.ndarray | None = None,
                        box: tuple[int, int, int, int] | None = None, tta: bool = True) -> np.ndarray:
    """Class probabilities of HU slices ``(n, H, W)`` -> ``(n, len(clf.classes))``.

    ``lung`` (same shape) is accepted for the interface; the crop is the thorax box
    of the slices themselves (or ``box``), the same crop the segmentation uses.
    ``tta``: average with the left-right mirrored slice (as the validation figures are
    measured; on UCSD val it raised the shipped model's AUC by about 0.01).
    """
    hu_slices = np.asarray(hu_slices)
    if hu_slices.ndim == 2:
        hu_slices = hu_slices[None]
    if len(hu_slices) == 0:
        return np.zeros((0, len(clf.classes)), np.float32)
    return predict_batches(clf, hu_slices_to_input(hu_slices, clf.input_size, box), tta=tta)


# ---------------------------------------------------------------- study level

@dataclass(frozen=True)
class StudyScore:
    """The classifier's answer for one study."""

    probabilities: dict[str, float]
    top_slices: tuple[int, ...]
    slice_scores: dict[int, float]
    model_name: str
    model_version: str
    burden_percent: float = 0.0
    p_pneumonia_burden: float = 0.0
    p_covid_pooled: float = float("nan")
    pooling: str = ""
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else ""

    def to_dict(self) -> dict[str, Any]:
        return {"probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()},
                "verdict": self.verdict, "top_slices": list(self.top_slices),
                "slice_scores": {str(k): round(float(v), 4) for k, v in self.slice_scores.items()},
                "model_name": self.model_name, "model_version": self.model_version,
                "burden_percent": round(float(self.burden_percent), 4),
                "p_pneumonia_burden": round(float(self.p_pneumonia_burden), 4),
                "p_covid_pooled": round(float(self.p_covid_pooled), 4) if self.p_covid_pooled == self.p_covid_pooled
                else None, "pooling": self.pooling}


def burden_pneumonia_probability(burden_percent: float, floor_percent: float = BURDEN_FLOOR_PERCENT,
                                 width: float = BURDEN_WIDTH) -> float:
    """P(pneumonia) from the lesion burden: logistic in ``ln(burden)``, 0.5 at the noise floor."""
    b = max(float(burden_percent), 1e-6) if burden_percent == burden_percent else 1e-6
    z = (math.log(b) - math.log(floor_percent)) / width
    return float(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))))


def choose_slices(lung: np.ndarray, lesion: np.ndarray, max_slices: int = MAX_STUDY_SLICES) -> list[int]:
    """Slices to score: lung-containing ones, lesion slices first (largest lesion area), evenly thinned."""
    n = lung.shape[0]
    plane = lung.shape[1] * lung.shape[2]
    lung_px = (lung > 0).reshape(n, -1).sum(axis=1)
    les_px = (lesion > 0).reshape(n, -1).sum(axis=1)
    lungy = np.flatnonzero(lung_px >= MIN_LUNG_FRACTION * plane)
    if len(lungy) == 0:
        lungy = np.arange(n)
    les = [int(i) for i in lungy if les_px[i] >= MIN_LESION_PIXELS]
    if les:
        if len(les) > max_slices:  # keep an even spread over the lesion slices
            les = [les[int(round(j))] for j in np.linspace(0, len(les) - 1, max_slices)]
        return sorted(set(les))
    k = min(max_slices // 2, len(lungy))
    return sorted({int(lungy[int(round(j))]) for j in np.linspace(0, len(lungy) - 1, k)})


def _burden_percent(measurements: Any, lung: np.ndarray, lesion: np.ndarray) -> float:
    v = getattr(measurements, "percent_involved", None) if measurements is not None else None
    if v is not None and v == v:
        return float(v)
    lung_n = int((lung > 0).sum())
    return 100.0 * float(((lesion > 0) & (lung > 0)).sum()) / lung_n if lung_n else 0.0


def study_probabilities(clf: LoadedClassifier, volume: Any, lung: np.ndarray, lesion: np.ndarray,
                        measurements: Any = None, box: tuple[int, int, int, int] | None = None,
                        tta: bool | None = None, focus: bool = True, focus_side: float | None = None) -> StudyScore:
    """Pool slice scores to ``{"covid19", "other_pneumonia", "no_pneumonia"}`` (sums to 1).

    Parameters
    ----------
    clf : LoadedClassifier
    volume : Volume or ndarray
        ``volume.hu`` (z, y, x) in HU, display order (an ndarray is taken as the HU itself).
    lung, lesion : ndarray
        The analysis' masks, same shape (nonzero = lung / lesion).
    measurements : Measurements, optional
        ``percent_involved`` gives the lesion burden (else computed from the masks).
    box : tuple, optional
        Thorax crop; default :func:`thorax_box` of the volume.
    tta : bool, optional
        Left-right flip averaging of every slice score (twice the network time, about 2.4
        CPU-seconds for 40 slices). Default: on for a single network, off for an ensemble,
        whose members already average (on UCSD val the flip moved the shipped ensemble's
        AUC by less than 0.002, and it would double the ensemble's cost).
    focus : bool
        Score each lesion slice by its lesion-focus view (:func:`focus_box`: a square of
        :data:`FOCUS_SIDE` of the thorax box round the slice's largest lesion piece) instead of
        the whole slice (default). A whole 512-px slice of a mild study is mostly normal lung,
        while UCSD's COVID-19 images are mostly figures framed on the finding. In six runs
        with the COVID-19 study P001 left out, the whole-slice view pooled it to P(COVID)
        0.09-0.18, the focus view (0.6) to 0.41-0.84, first of the four studies in every run
        (``benchmarks/study_views.py``, README).
    focus_side : float, optional
        The view's side as a share of the thorax box's shorter side (default
        :data:`FOCUS_SIDE`; for sensitivity checks).
    """
    import time

    t0 = time.perf_counter()
    if tta is None:
        tta = not isinstance(clf.net, EnsembleClassifier)
    hu = volume.hu if hasattr(volume, "hu") else np.asarray(volume)
    lung = np.asarray(lung)
    lesion = np.asarray(lesion)
    if box is None:
        box = thorax_box(hu)
    idx = choose_slices(lung, lesion)
    probs = np.zeros((len(idx), len(clf.classes)), np.float32)
    keep: list[int] = []
    if idx and focus:  # lesion slices: the view zoomed on their largest lesion piece
        xf, keep = lesion_focus_inputs(hu[idx], (lesion[idx] > 0) & (lung[idx] > 0), clf.input_size, box,
                                       focus_side)
        if keep:
            probs[keep] = predict_batches(clf, xf, tta=tta)
    focus = len(keep)
    rest = [j for j in range(len(idx)) if j not in set(keep)]
    if rest:  # the whole slice (thorax crop)
        probs[rest] = predict_batches(clf, hu_slices_to_input(hu[[idx[j] for j in rest]], clf.input_size, box), tta=tta)
    les_px = (lesion[idx] > 0).reshape(len(idx), -1).sum(axis=1).astype(np.float64) if idx else np.zeros(0)
    pos = clf.positive_index
    if les_px.sum() >= MIN_LESION_PIXELS:
        w = les_px / les_px.sum()  # attention over lesion slices: weight = lesion area
        pooling = "lesion-area attention" + (f" (lesion-focus view on {focus} slices)" if focus else "")
    else:  # no lesion: mean of the top-k slices by P(COVID)
        k = max(1, min(5, len(idx)))
        w = np.zeros(len(idx))
        if len(idx):
            w[np.argsort(-probs[:, pos])[:k]] = 1.0 / k
        pooling = f"top-{k} mean (no lesion slices)"
    pooled = (w[:, None] * probs).sum(axis=0) if len(idx) else np.full(len(clf.classes), 1.0 / len(clf.classes))
    burden = _burden_percent(measurements, lung, lesion)
    p_pneu = burden_pneumonia_probability(burden)
    if clf.binary:
        p_covid = float(pooled[pos])
        out = {"covid19": p_pneu * p_covid, "other_pneumonia": p_pneu * (1.0 - p_covid), "no_pneumonia": 1.0 - p_pneu}
    else:
        p_covid = float(pooled[clf.classes.index("covid19")]) if "covid19" in clf.classes else 0.0
        none_keys = [i for i, c in enumerate(clf.classes) if c in ("no_pneumonia", "non_covid")]
        p_none_model = float(sum(pooled[i] for i in none_keys))
        p_none = 0.5 * (p_none_model + (1.0 - p_pneu))
        pneu_model = max(1e-9, 1.0 - p_none_model)
        other = 1.0 - p_covid - p_none_model
        out = {"covid19": (1.0 - p_none) * p_covid / pneu_model,
               "other_pneumonia": (1.0 - p_none) * max(0.0, other) / pneu_model, "no_pneumonia": p_none}
    total = sum(out.values())
    out = {k: float(v / total) for k, v in out.items()}
    scores = {int(i): float(probs[j, pos]) for j, i in enumerate(idx)}
    contrib = w * probs[:, pos] if len(idx) else np.zeros(0)
    top = tuple(int(idx[j]) for j in np.argsort(-contrib)[:5] if contrib[j] > 0)
    return StudyScore(probabilities=out, top_slices=top, slice_scores=scores, model_name=clf.name,
                      model_version=clf.version, burden_percent=burden, p_pneumonia_burden=p_pneu,
                      p_covid_pooled=p_covid, pooling=pooling, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------- Grad-CAM

def classifier_cam(clf: LoadedClassifier, hu_slice: np.ndarray, lung_slice: np.ndarray | None = None,
                   target: str | None = None, layer: str | None = None,
                   box: tuple[int, int, int, int] | None = None,
                   lesion_slice: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of the classifier for one HU slice -> ``(H, W)`` float32 in [0, 1].

    Target is the logit of ``target`` (default the COVID-19 class); the map is taken at the
    bottleneck (``layer``, see :meth:`SliceClassifier.cam_layers`), resized back into the
    thorax crop (zero outside) and divided by its maximum. ``lung_slice``, when given,
    zeroes the map outside the dilated lung (the classifier is meant to look at the lung).
    ``lesion_slice`` (the slice's lesion mask): the map is of the slice's lesion-focus view -
    the input the study score used (:func:`focus_box`) - placed in its square (zero outside
    it); without a lesion pixel, of the whole slice.
    """
    import cv2

    hu_slice = np.asarray(hu_slice)
    if box is None:
        box = thorax_box(hu_slice)
    if lesion_slice is not None:
        les = np.asarray(lesion_slice) > 0
        if lung_slice is not None:
            les &= np.asarray(lung_slice) > 0
        box = focus_box(les, box) or box
    x = torch.from_numpy(hu_slices_to_input(hu_slice[None], clf.input_size, box)).to(clf.device)
    modules = cam_modules(clf.net, layer)
    store: list[torch.Tensor] = []

    def hook(_m: Any, _i: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)
        store.append(leaf)
        return leaf * 1.0

    cls = clf.classes.index(target) if target else clf.positive_index
    handles = [m.register_forward_hook(hook) for m in modules]
    flags = [(p, p.requires_grad) for p in clf.net.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            logits = clf.net(x)
            logits[:, cls].sum().backward()
    finally:
        for h in handles:
            h.remove()
        for p, f in flags:
            p.requires_grad_(f)
    maps = []
    for leaf in store:  # one map per hooked module (one per ensemble member)
        a, g = leaf.detach(), leaf.grad.detach()
        maps.append(torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))[0].float())
    side = max(m.shape[-1] for m in maps)
    cam = sum(F.interpolate(m[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
              if m.shape[-1] != side else m for m in maps).cpu().numpy()
    y0, y1, x0, x1 = box
    out = np.zeros(hu_slice.shape[-2:], np.float32)
    out[y0:y1, x0:x1] = cv2.resize(cam, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    if lung_slice is not None and np.any(lung_slice):
        near = cv2.dilate((np.asarray(lung_slice) > 0).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        out[~near] = 0.0
    m = float(out.max())
    return (out / m).astype(np.float32) if m > 0 else out
