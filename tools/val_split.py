"""Recreate a model's validation split as folders for ``ctscreen evaluate``.

Usage: python tools/val_split.py MODEL.pt|CARD.json DATA_DIR OUT_DIR
Links the card's ``labelled_val`` slices (image + multi-class mask) into
OUT_DIR/Imgs and OUT_DIR/GT, so the validation figures in the model card can
be re-measured with the same command users run.
"""

import json
import sys
from pathlib import Path


def main() -> None:
    src, data, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    if src.suffix == ".pt":
        import torch

        card = torch.load(src, map_location="cpu", weights_only=True)["card"]
    else:
        card = json.loads(src.read_text())
    names = card["data"]["labelled_val"]
    (out / "Imgs").mkdir(parents=True, exist_ok=True)
    (out / "GT").mkdir(parents=True, exist_ok=True)
    for n in names:
        for sub, dst, ext in (("train/Imgs", "Imgs", ".jpg"), ("train-multiclass/GT", "GT", ".png")):
            link = out / dst / f"{n}{ext}"
            if not link.exists():
                link.symlink_to((data / sub / f"{n}{ext}").resolve())
    print(f"{len(names)} validation slices linked under {out}")


if __name__ == "__main__":
    main()
