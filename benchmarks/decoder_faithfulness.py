"""Does the cheaper decoder explain as faithfully? The first and the current design, same protocol.

Trains (or loads from the cache) the book's cpu-mode Ra-NEM for the pretrained EfficientNet-Lite0
twice, with the first decoder design (transposed convs to full resolution, widths 256..16) and with
the current default (``ranem.nem.DEFAULT_*``), on the same images, seed and budget, then scores both
on chapter 8's protocol: the first ``n_eval`` images of the seeded draw from Imagenette's
validation split, insertion - deletion AUC with ``curve_steps`` steps. Prints each mean with its
standard error, the paired difference with its standard error and the Wilcoxon signed-rank test.
The check passes when the new design is no worse than one standard error of the difference.

  RANEM_DATA=/path/to/datasets .venv/bin/python benchmarks/decoder_faithfulness.py   # ~15 min cold on 2 cores
"""
from __future__ import annotations

import argparse

import torch

from ranem import config, data, nem as nem_module
from ranem.metrics import faithfulness, spread, wilcoxon
from ranem.zoo import get_classifier, get_nem

FIRST_DESIGN = {"upsample": "transposed", "output_stride": 1, "decoder_channels": [256, 128, 64, 32, 16]}


def current_design() -> dict:
    return {"upsample": nem_module.DEFAULT_UPSAMPLE, "output_stride": nem_module.DEFAULT_OUTPUT_STRIDE,
            "decoder_channels": list(nem_module.DEFAULT_DECODER_CHANNELS)}


def scores(design: dict, settings, x) -> tuple[torch.Tensor, float]:
    """(per-image faithfulness, training seconds) of the cpu-mode Ra-NEM built with ``design``."""
    nem = get_nem("ranem", "cnn", "imagenette", settings, progress=True, **design)
    return faithfulness(nem.classifier, x, nem.explain(x), steps=settings.curve_steps).cpu(), nem.history["train_seconds"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="cpu", choices=config.MODES)
    args = ap.parse_args(argv)
    s = config.settings(args.mode)
    model = get_classifier("cnn", "imagenette", settings=s, progress=False)
    images, _ = data.evaluation_images(s.n_eval, s.image_size, seed=0, limit=s.imagenette_val)
    x = data.normalize(images, model.ranem_info["mean"], model.ranem_info["std"])
    first, t_first = scores(FIRST_DESIGN, s, x)
    new, t_new = scores(current_design(), s, x)
    first_s, new_s, diff_s = spread(first), spread(new), spread(new - first)
    print(f"{s.mode} mode, {model.ranem_info['name']} at {s.image_size} px, {s.n_eval} held-out images, "
          f"{s.curve_steps} curve steps; NEMs trained on {s.nem_train} images x {s.nem_epochs} epochs, S = {s.nem_samples}")
    print(f"first design   {FIRST_DESIGN}: faithfulness {first_s.mean:.4f} ± {first_s.sem:.4f}, training {t_first:.0f} s")
    print(f"current design {current_design()}: faithfulness {new_s.mean:.4f} ± {new_s.sem:.4f}, training {t_new:.0f} s")
    test = wilcoxon(new.numpy(), first.numpy())
    print(f"paired difference (current - first) {diff_s.mean:+.4f} ± {diff_s.sem:.4f}; Wilcoxon p = {test.pvalue:.3g}")
    ok = diff_s.mean >= -diff_s.sem
    print("within one standard error or better: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
