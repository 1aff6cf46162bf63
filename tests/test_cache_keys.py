"""The cache keys of the book's classifiers and NEMs stay what they are: hours of training are
stored under them (``<cache>/classifiers/<key>.*`` and ``<cache>/nems/<classifier key>-<kind>-<digest>/``).

The classifier keys were computed from the code as it stood before the cache moved into ranem.zoo
(commit f51c6ab), the gpu ones since gpu mode went offline (EfficientNet-Lite2 from its wheel, a
ViT-Tiny trained here, the budget of one GPU run), the NEM digests since NEM_CACHE_VERSION 2 added
the decoder's design to the spec.
A change that must retrain on purpose bumps CACHE_VERSION or NEM_CACHE_VERSION and updates these
values in the same commit; any other change of them is a bug. Computing a key needs no
training, no data and no network, so every run mode is checked, not only the quick one.
"""
import pytest

from ranem import config
from ranem.zoo import cache_key, classifier_spec, nem_key, nem_spec

CASES = [(mode, dataset, kind) for mode in config.MODES for dataset in ("imagenette", "synthetic")
         for kind in ("cnn", "vit")]
NEM_KINDS = ("ranem", "nemt", "ranem_insdel")

CLASSIFIER_KEYS = {
    "quick/imagenette/cnn": "imagenette-tf_efficientnet_lite0-432baae5d2dd",
    "quick/imagenette/vit": "imagenette-vit_tiny_patch16_224-7658cc8235d4",
    "quick/synthetic/cnn": "synthetic-resnet10t-834bad32bf26",
    "quick/synthetic/vit": "synthetic-vit_tiny_patch16_224-632abafef0e4",
    "cpu/imagenette/cnn": "imagenette-tf_efficientnet_lite0-38c49fe02275",
    "cpu/imagenette/vit": "imagenette-vit_tiny_patch16_224-60afee40064f",
    "cpu/synthetic/cnn": "synthetic-resnet10t-c64802b9198a",
    "cpu/synthetic/vit": "synthetic-vit_tiny_patch16_224-4be78bef0e61",
    "gpu/imagenette/cnn": "imagenette-tf_efficientnet_lite2-d3f324af0694",
    "gpu/imagenette/vit": "imagenette-vit_tiny_patch16_224-814cc90b2887",
    "gpu/synthetic/cnn": "synthetic-resnet10t-b48f689e660b",
    "gpu/synthetic/vit": "synthetic-vit_tiny_patch16_224-78c55cfdd306",
}
NEM_DIGESTS = {
    "quick/imagenette/cnn/ranem": "adfbba41e909",
    "quick/imagenette/cnn/nemt": "d74acf86bf23",
    "quick/imagenette/cnn/ranem_insdel": "c2c60e760339",
    "quick/imagenette/vit/ranem": "b6cc85ad4f50",
    "quick/imagenette/vit/nemt": "e4e6845d84e3",
    "quick/imagenette/vit/ranem_insdel": "e34cb394410c",
    "quick/synthetic/cnn/ranem": "23a6a2b4258b",
    "quick/synthetic/cnn/nemt": "e53b08a1528a",
    "quick/synthetic/cnn/ranem_insdel": "fca0aa7693c0",
    "quick/synthetic/vit/ranem": "76efee93c4f9",
    "quick/synthetic/vit/nemt": "f4712b7b415c",
    "quick/synthetic/vit/ranem_insdel": "a36444a85dba",
    "cpu/imagenette/cnn/ranem": "dcbe204873b0",
    "cpu/imagenette/cnn/nemt": "a3da03e90d30",
    "cpu/imagenette/cnn/ranem_insdel": "b04720a30671",
    "cpu/imagenette/vit/ranem": "487b33105d41",
    "cpu/imagenette/vit/nemt": "fdbacb3842e3",
    "cpu/imagenette/vit/ranem_insdel": "c00f4520df19",
    "cpu/synthetic/cnn/ranem": "7981ffcb78bc",
    "cpu/synthetic/cnn/nemt": "04654f257743",
    "cpu/synthetic/cnn/ranem_insdel": "0471fade6b73",
    "cpu/synthetic/vit/ranem": "b997da602d12",
    "cpu/synthetic/vit/nemt": "c978bb0be06e",
    "cpu/synthetic/vit/ranem_insdel": "36763e65779f",
    "gpu/imagenette/cnn/ranem": "f5cca8261ddc",
    "gpu/imagenette/cnn/nemt": "3f4ea953c3b9",
    "gpu/imagenette/cnn/ranem_insdel": "f53f74f68ac1",
    "gpu/imagenette/vit/ranem": "fa3acf230777",
    "gpu/imagenette/vit/nemt": "23980bae57de",
    "gpu/imagenette/vit/ranem_insdel": "c2c2fd436fb2",
    "gpu/synthetic/cnn/ranem": "c7a5dd31c6a9",
    "gpu/synthetic/cnn/nemt": "1411d9afab79",
    "gpu/synthetic/cnn/ranem_insdel": "2713f66b7664",
    "gpu/synthetic/vit/ranem": "b77a1a000f22",
    "gpu/synthetic/vit/nemt": "f7cfb953647d",
    "gpu/synthetic/vit/ranem_insdel": "c6767d232977",
}


def nem_folder(kind, mode, dataset, classifier):
    """The folder name ``get_nem`` gives the NEM of ``kind`` for the classifier of ``classifier``."""
    s = config.settings(mode)
    spec = classifier_spec(classifier, dataset, s)
    key = cache_key(spec)
    return nem_key(key, kind, nem_spec(kind, key, dataset, s, image_size=spec["image_size"]))


@pytest.mark.parametrize("mode,dataset,kind", CASES)
def test_classifier_cache_keys_are_pinned(mode, dataset, kind):
    spec = classifier_spec(kind, dataset, config.settings(mode))
    assert cache_key(spec) == CLASSIFIER_KEYS[f"{mode}/{dataset}/{kind}"]


@pytest.mark.parametrize("nem", NEM_KINDS)
@pytest.mark.parametrize("mode,dataset,kind", CASES)
def test_nem_cache_folders_are_pinned(mode, dataset, kind, nem):
    case = f"{mode}/{dataset}/{kind}"
    expected = f"{CLASSIFIER_KEYS[case]}-{nem}-{NEM_DIGESTS[f'{case}/{nem}']}"
    assert nem_folder(nem, mode, dataset, kind) == expected
